"""Broker faults (connections cut, the broker stopped and started) against the suite's own
RabbitMQ node (tests/fault/conftest.py), never the contributor's broker on 5672."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
from neonize.events import ConnectedEv

from tests.conftest import StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.fault.conftest import OwnBroker
from tests.helpers import (
    SlowDryRun,
    delete_topology,
    job_body,
    job_metric,
    publish_many,
    queue_count,
    sent_records,
    wait_for,
)
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor


def counts(settings: Settings) -> Counter[str]:
    return Counter(r["job_key"] for r in sent_records(settings.dry_run_file))


async def _count(settings: Settings, queue: str, expected: int) -> bool:
    return await queue_count(settings, queue) == expected


async def _queue_empty(settings: Settings) -> bool:
    return await queue_count(settings, settings.queue_name) == 0


async def _none_ready(settings: Settings) -> bool:
    return await queue_count(settings, settings.queue_name) == 0


async def _is(status: Callable[[], Awaitable[int]], code: int) -> bool:
    return await status() == code


async def test_closing_all_connections_mid_stream_loses_no_job(
    own_topology: Settings, start_worker: StartWorker, own_broker: OwnBroker
) -> None:
    total = 500
    ids = [f"job-{i}" for i in range(total)]
    await publish_many(own_topology, (job_body(i) for i in range(total)), message_ids=ids)
    worker = await start_worker(
        own_topology, transport=SlowDryRun(own_topology.dry_run_file, Redactor(True))
    )
    await wait_for(lambda: len(sent_records(own_topology.dry_run_file)) >= 100, what="100 sent")
    await trio.to_thread.run_sync(own_broker.ctl, "close_all_connections", "wa-trio fault test")
    sent_at_cut = len(sent_records(own_topology.dry_run_file))
    assert sent_at_cut < total, "the stream ended before the cut; the test proved nothing"
    await wait_for(
        lambda: {r["job_key"] for r in sent_records(own_topology.dry_run_file)} >= set(ids),
        timeout=90,
        what="every job sent",
    )
    keys = Counter(r["job_key"] for r in sent_records(own_topology.dry_run_file))
    duplicates = sum(n - 1 for n in keys.values())
    print(
        f"\nclose_all_connections after {sent_at_cut}/{total} sends: {duplicates} sent more "
        f"than once, {worker.pipeline.statistics().connections} connections"
    )
    assert set(keys) == set(ids)
    assert worker.pipeline.statistics().connections >= 2
    await wait_for(lambda: _count(own_topology, own_topology.queue_name, 0), what="queue empty")


async def test_healthz_503_within_7s_of_broker_stop_and_200_after_start(
    own_topology: Settings, start_worker: StartWorker, own_broker: OwnBroker
) -> None:
    worker = await start_worker(own_topology)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=10) as http:

        async def status() -> int:
            return (await http.get("/healthz")).status_code

        await wait_for(lambda: _is(status, 200), what="healthy")
        await trio.to_thread.run_sync(own_broker.ctl, "stop_app")
        try:
            stopped = trio.current_time()
            await wait_for(lambda: _is(status, 503), timeout=7, interval=0.2, what="503")
            assert trio.current_time() - stopped <= 7
        finally:
            await trio.to_thread.run_sync(own_broker.ctl, "start_app")
            await trio.to_thread.run_sync(own_broker.ctl, "await_startup")
        await wait_for(lambda: _is(status, 200), timeout=90, interval=0.5, what="200 again")


async def test_broker_stop_and_start_mid_stream_sends_every_job_exactly_once(
    own_topology: Settings, start_worker: StartWorker, own_broker: OwnBroker
) -> None:
    total = 1000
    ids = [f"job-{i}" for i in range(total)]
    await publish_many(own_topology, (job_body(i) for i in range(total)), message_ids=ids)
    worker = await start_worker(own_topology)
    await wait_for(lambda: len(sent_records(own_topology.dry_run_file)) >= 200, what="200 sent")
    await trio.to_thread.run_sync(own_broker.ctl, "stop_app")
    try:
        at_stop = len(sent_records(own_topology.dry_run_file))
    finally:
        await trio.to_thread.run_sync(own_broker.ctl, "start_app")
        await trio.to_thread.run_sync(own_broker.ctl, "await_startup")
    assert at_stop < total, "the stream ended before the stop; the test proved nothing"
    await wait_for(lambda: set(counts(own_topology)) >= set(ids), timeout=120, what="all sent")
    await wait_for(lambda: _queue_empty(own_topology), timeout=60, what="queue drained")
    sent = counts(own_topology)
    print(
        f"\nstop_app after {at_stop}/{total}: "
        f"{worker.pipeline.statistics().connections} connections, "
        f"{sum(n - 1 for n in sent.values())} duplicates"
    )
    assert set(sent) == set(ids)
    assert max(sent.values()) == 1
    assert worker.pipeline.statistics().connections >= 2


@pytest.mark.parametrize(("prefetch", "jobs"), [(1, 1), (10, 3)], ids=["one-job", "batch"])
async def test_broker_loss_during_a_send_records_it_and_never_sends_it_again(
    own_env: Callable[..., dict[str, str]],
    own_broker: OwnBroker,
    start_worker: StartWorker,
    prefetch: int,
    jobs: int,
) -> None:
    """The connection dies while WhatsApp is still answering a send: the send finishes and is
    recorded `sent`; only the ack is lost, and the redelivered copy is acked as a duplicate."""
    settings = Settings.from_env(
        own_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_PREFETCH_COUNT=str(prefetch))
    )
    gate = threading.Event()
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, send_gate=gate)
    worker = await start_worker(settings, transport=transport)
    try:
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await publish_many(
            settings, [job_body(i) for i in range(jobs)], [f"cut-{i}" for i in range(jobs)]
        )
        # all delivered (unacked) before WhatsApp connects: the sender takes them together
        await wait_for(
            lambda: _none_ready(settings),
            what="jobs delivered",
        )
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: clients[0].sending == 1, what="a send in progress")
        connections = worker.pipeline.statistics().connections
        await trio.to_thread.run_sync(own_broker.ctl, "close_all_connections", "wa-trio test")
        # the scenario, not a wait for a condition: WhatsApp answers late, after the cut (the
        # pipeline cannot report the loss before the shielded send returns)
        await trio.sleep(0.3)
        gate.set()  # WhatsApp answers now, after the connection is gone

        def processed(status: str) -> float | None:
            return job_metric(worker, "worker_jobs_processed_total", status=status)

        # the send in flight finishes and is recorded; its redelivered copy is a duplicate.
        # The batch's later jobs are either sent before the cancellation lands (then recorded,
        # and their copies are duplicates too) or not begun (then sent once after reconnect)
        await wait_for(
            lambda: (processed("duplicate") or 0) + (processed("success") or 0) == jobs,
            what="every job settled",
        )
        assert (processed("duplicate") or 0) >= 1
        assert worker.pipeline.statistics().connections > connections
        assert sorted(text for _, text in clients[0].sent) == [f"job {i}" for i in range(jobs)]
        assert job_metric(worker, "worker_jobs_ambiguous_total", action="resend") in (None, 0.0)
        assert await queue_count(settings, settings.queue_name) == 0
    finally:
        gate.set()
        await delete_topology(settings)


async def test_a_scheduled_job_survives_a_broker_restart_and_arrives_on_time(
    own_topology: Settings, start_worker: StartWorker, own_broker: OwnBroker
) -> None:
    """Parked in a durable wait queue as a persistent message: a broker restart loses nothing."""
    import time
    from datetime import UTC, datetime

    worker = await start_worker(own_topology)
    due = time.time() + 8
    when = datetime.fromtimestamp(due, UTC).isoformat()
    await publish_many(own_topology, [job_body(1, send_at=when)], message_ids=["sched"])
    await wait_for(
        lambda: bool(job_metric(worker, "worker_jobs_processed_total", status="scheduled")),
        what="parked",
    )
    await trio.to_thread.run_sync(own_broker.ctl, "stop_app")
    await trio.to_thread.run_sync(own_broker.ctl, "start_app")
    await trio.to_thread.run_sync(own_broker.ctl, "await_startup")
    await wait_for(lambda: bool(sent_records(own_topology.dry_run_file)), timeout=30, what="sent")
    [record] = sent_records(own_topology.dry_run_file)
    assert record["job_key"] == "sched"
    assert -0.05 <= record["sent_at"] - due < 1.5, record["sent_at"] - due
