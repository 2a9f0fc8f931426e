"""consume -> validate -> send -> ack against the real RabbitMQ, with the dry-run transport."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import trio

from tests.conftest import StartWorker
from tests.helpers import (
    drain_queue,
    job_body,
    job_metric,
    processed,
    publish_many,
    queue_count,
    rabbitmqctl,
    sent_records,
    wait_for,
)
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress
from wa_trio.config.settings import Settings
from wa_trio.core.errors import TopologyError
from wa_trio.run import run_worker


async def test_valid_jobs_are_sent_and_acked(topology: Settings, start_worker: StartWorker) -> None:
    worker = await start_worker(topology)
    await publish_many(topology, (job_body(i) for i in range(20)))
    await wait_for(lambda: len(sent_records(topology.dry_run_file)) == 20, what="20 sends")
    await wait_for(lambda: processed(worker, "success") == 20, what="20 acks")
    records = sent_records(topology.dry_run_file)
    assert sorted(r["text_message"] for r in records) == sorted(f"job {i}" for i in range(20))
    assert {r["destination"] for r in records} == {"+5511999999999"}
    for record in records:
        assert record["message_id"] and record["sent_at"] > 0 and record["user_id"]
    assert await queue_count(topology, topology.queue_name) == 0
    # nothing left unacknowledged either
    out = rabbitmqctl("list_queues", "name", "messages_unacknowledged")
    assert re.search(rf"^{re.escape(topology.queue_name)}\s+0$", out, re.MULTILINE)


INVALID = {
    "invalid_encoding": b"\xff\xfe garbage",
    "invalid_json": b"{not json",
    "wrong_type": b"[1, 2, 3]",
    "missing_field": b'{"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"}',
    "invalid_user_id": job_body(user_id="nope"),
    "invalid_destination": job_body(destination="+12"),
    "empty_text": job_body(text_message=""),
    "text_too_long": job_body(text_message="x" * 4097),
    "content_rejected": job_body(text_message="' OR '1'='1"),
}


async def test_each_invalid_kind_is_dead_lettered_with_code(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    codes = list(INVALID)
    await publish_many(
        topology, (INVALID[c] for c in codes), message_ids=codes, headers={"trace_id": "t-123"}
    )
    await wait_for(lambda: processed(worker, "invalid") == len(codes), what="all rejected")
    await wait_for(lambda: _count(topology, topology.dlq_name, len(codes)), what="DLQ filled")
    dead = await drain_queue(topology, topology.dlq_name)
    by_id = {m.header.message_id: m for m in dead}
    assert set(by_id) == set(codes)
    for code, message in by_id.items():
        headers = amqp.Properties.of(message.header).headers
        assert headers["x-error-code"] == code, code
        assert headers["x-error-message"]
        assert headers["x-original-routing-key"] == topology.routing_key
        assert headers["trace_id"] == "t-123"  # original headers kept
        assert message.body == INVALID[code]  # original body kept
        failed = job_metric(worker, "worker_jobs_failed_total", error_type=code)
        assert failed == 1
    assert sent_records(topology.dry_run_file) == []
    assert await queue_count(topology, topology.queue_name) == 0


async def _count(settings: Settings, queue: str, expected: int) -> bool:
    return await queue_count(settings, queue) == expected


async def test_prefetch_count_reaches_the_broker(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_PREFETCH_COUNT="37"))
    try:
        worker = await start_worker(settings)
        await wait_for(lambda: worker.pipeline.connected, what="consumer up")
        pattern = re.compile(rf"^{re.escape(settings.queue_name)}\s+37$", re.MULTILINE)

        def listed() -> bool:
            return bool(
                pattern.search(rabbitmqctl("list_consumers", "queue_name", "prefetch_count"))
            )

        await wait_for(listed, interval=0.2, what="the consumer with prefetch 37")
    finally:
        from tests.helpers import delete_topology

        await delete_topology(settings)


async def test_topology_mismatch_stops_with_one_clear_line(topology: Settings) -> None:
    async with (
        amqp.connect(BrokerAddress.from_settings(topology)) as connection,
        connection.open_channel() as channel,
    ):
        await channel.queue_declare(
            topology.queue_name, durable=True, arguments={"x-max-length": 5}
        )
    with pytest.raises(TopologyError) as info:
        with trio.fail_after(20):
            await run_worker(topology, handle_signals=False)
    message = str(info.value)
    assert "\n" not in message
    assert topology.queue_name in message
    assert "x-max-length" in message
    assert "delete" in message and "WHATSAPP_QUEUE_NAME" in message
