"""Regressions of the hardening review (issue 18): one message must never take the worker down,
exactly-once holds on the batch path, a failing ledger disk holds jobs instead of crashing.

Raw publishes go through pika, a second AMQP client standing in for an outside publisher: it
writes what our own client cannot (negative and 64-bit integers, nulls in headers).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pika
import pytest
import trio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import BROKER_URL, DeleteAfter, StartWorker
from tests.helpers import (
    EventTap,
    delete_topology,
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    queue_count,
    sent_records,
    wait_for,
)
from wa_trio.bus.amqp import retry_queue_name
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.worker.app import Worker


async def raw_publish_async(
    settings: Settings, messages: list[tuple[bytes, dict[str, Any]]]
) -> None:
    await publish_many(settings, [])  # the topology exists before pika publishes
    await trio.to_thread.run_sync(raw_publish, settings, messages)


def raw_publish(
    settings: Settings,
    messages: list[tuple[bytes, dict[str, Any]]],
) -> None:
    """Publish (body, properties) pairs with pika (blocking: call through to_thread)."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, props in messages:
            channel.basic_publish(
                settings.exchange,
                settings.routing_key,
                body,
                pika.BasicProperties(**props),
                mandatory=True,
            )
    finally:
        connection.close()


def _processed(worker: Worker, status: str) -> float:
    return job_metric(worker, "worker_jobs_processed_total", status=status) or 0.0


def _settled(worker: Worker) -> float:
    return sum(_processed(worker, s) for s in ("success", "invalid", "failed", "retried"))


BAD_HEADERS = {"neg": -1, "sent_at_ms": 1764000000000, "nothing": None, "ok": "kept"}


async def test_unencodable_headers_on_an_invalid_job_are_dead_lettered_not_a_crash(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    await raw_publish_async(
        topology, [(b"{not json", {"headers": BAD_HEADERS, "message_id": "bad-1"})]
    )
    await publish_many(topology, [job_body(1)], message_ids=["after-1"])
    await wait_for(lambda: _processed(worker, "success") == 1, what="the next job is sent")
    assert _processed(worker, "invalid") == 1
    [letter] = await drain_queue(topology, topology.dlq_name)
    headers = letter.header.headers
    assert headers["x-error-code"] == b"invalid_json" or headers["x-error-code"] == "invalid_json"
    notes = headers["x-header-notes"]
    notes = notes.decode() if isinstance(notes, bytes) else notes
    assert "sent_at_ms" in notes and "neg" in notes and "nothing" in notes
    assert headers["sent_at_ms"] in (b"1764000000000", "1764000000000")
    assert headers["ok"] in (b"kept", "kept")


async def test_unencodable_headers_on_a_failed_send_go_to_the_retry_queue(
    failing_topology: Settings, start_worker: StartWorker
) -> None:
    settings = failing_topology
    worker = await start_worker(settings)
    await raw_publish_async(
        settings, [(job_body(1), {"headers": BAD_HEADERS, "message_id": "r-1"})]
    )
    await wait_for(lambda: _processed(worker, "retried") == 1, what="retried")
    [copy] = await drain_queue(settings, retry_queue_name(settings, 60.0))
    assert copy.header.headers["x-retry-count"] == 1
    assert worker.pipeline.statistics().connected  # still consuming


async def test_a_long_message_id_is_sent_and_its_events_published(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    """A 250-byte message_id used to overflow the status event's message id (255 bytes)."""
    tap = EventTap(topology)
    await tap.bind()
    delete_after(topology, extra_queues=[tap.queue])
    worker = await start_worker(topology)
    long_id = "L" * 250
    await publish_many(topology, [job_body(1), job_body(2)], message_ids=[long_id, "short"])
    await wait_for(lambda: _processed(worker, "success") == 2, what="both sent")
    await wait_for(lambda: tap.at_least(2), what="both events")
    keys = {event["job_key"] for event in tap.events}
    assert "short" in keys
    assert any(key.startswith("mid-sha256:") for key in keys)


async def test_copies_of_one_message_id_in_one_batch_are_sent_once(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_PREFETCH_COUNT="50"))
    delete_after(settings)
    ids = ["dup", "a", "dup", "b", "dup"]
    # published before the worker consumes: delivered together, taken as one batch
    await publish_many(settings, [job_body(1) for _ in ids], message_ids=ids)
    worker = await start_worker(settings)
    await wait_for(lambda: _processed(worker, "duplicate") == 2, what="two duplicates")
    await wait_for(lambda: _processed(worker, "success") == 3, what="three sent")
    counts = Counter(r["job_key"] for r in sent_records(settings.dry_run_file))
    assert counts == {"dup": 1, "a": 1, "b": 1}
    assert await queue_count(settings, settings.queue_name) == 0


async def test_a_reused_message_id_with_another_body_is_dead_lettered(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    await publish_many(topology, [job_body(1)], message_ids=["same"])
    await wait_for(lambda: _processed(worker, "success") == 1, what="first sent")
    await publish_many(topology, [job_body(2)], message_ids=["same"])
    await wait_for(lambda: _processed(worker, "invalid") == 1, what="conflict")
    [letter] = await drain_queue(topology, topology.dlq_name)
    assert letter.header.headers["x-error-code"] in (b"message_id_conflict", "message_id_conflict")
    assert json.loads(letter.body)["text_message"] == "job 2"
    assert len(sent_records(topology.dry_run_file)) == 1


async def test_a_full_ledger_holds_jobs_reports_it_and_resumes(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    ledger = worker.ledger.ledger
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger.limit_pages(pages)  # SQLITE_FULL from now on, as with a full disk
    ids = [f"full-{i}" for i in range(30)]
    await publish_many(topology, [job_body(i) for i in range(30)], message_ids=ids)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:

        async def red() -> bool:
            response = await http.get("/healthz")
            return response.status_code == 503 and "ledger" in response.json()["failing"]

        await wait_for(red, what="health red with the ledger named")
        sent_while_full = len(sent_records(topology.dry_run_file))
        ledger.limit_pages(1_000_000)  # space returns
        await wait_for(lambda: _processed(worker, "success") == 30, what="all sent")
        assert (await http.get("/healthz")).status_code == 200
    assert sent_while_full < 30
    counts = Counter(r["job_key"] for r in sent_records(topology.dry_run_file))
    assert counts == dict.fromkeys(ids, 1)


async def test_a_duplicate_does_not_wait_for_a_pacing_slot(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_RATE_LIMIT="1/h", WHATSAPP_RATE_BURST="1"))
    delete_after(settings)
    worker = await start_worker(settings)
    await publish_many(settings, [job_body(1)], message_ids=["paced"])
    await wait_for(lambda: _processed(worker, "success") == 1, what="first sent")
    await publish_many(settings, [job_body(1), b"{bad"], message_ids=["paced", "junk"])
    # the bucket is empty for an hour: only the ledger and validation can settle these
    await wait_for(lambda: _processed(worker, "duplicate") == 1, timeout=10, what="dup")
    await wait_for(lambda: _processed(worker, "invalid") == 1, timeout=10, what="invalid")


# ------------------------------------------------------------------- property: any publish

_header_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.decimals(min_value=-1000, max_value=1000, places=2),
    st.text(max_size=40),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=10), st.integers(-(2**63), 2**63 - 1), max_size=2),
)
_short_text = st.text(min_size=1, max_size=255).filter(lambda t: len(t.encode()) <= 255)
# short strings as bytes too: a publisher may write any bytes, UTF-8 or not (issue 26)
_short = st.one_of(_short_text, st.binary(min_size=1, max_size=255))
_key = st.one_of(st.text(min_size=1, max_size=60), st.binary(min_size=1, max_size=60))


def _nest(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


_header_values = st.one_of(
    _header_values,
    st.binary(max_size=40),
    st.integers(min_value=1, max_value=200).map(_nest),  # deeper than the decoder's bound
)
_properties = st.fixed_dictionaries(
    {"headers": st.dictionaries(_key, _header_values, max_size=5)},
    optional={
        "message_id": _short,
        "correlation_id": _short,
        "type": _short,
        "app_id": _short,
        "content_type": st.one_of(
            st.sampled_from(["application/json", "text/plain", "x" * 200]), _short
        ),
        "timestamp": st.integers(min_value=0, max_value=2**63 - 1),
        "priority": st.integers(min_value=0, max_value=9),
    },
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)
# the fields a job may carry, each given anything JSON can hold (media, templates, schedules)
_fields = st.dictionaries(
    st.sampled_from(
        [
            "media",
            "cloud_template",
            "template",
            "params",
            "language",
            "send_at",
            "expires_at",
            "ttl_seconds",
            "text_message",
            "destination",
        ]
    ),
    _json,
    max_size=3,
)
_bodies = st.one_of(
    st.builds(lambda n: job_body(n), st.integers(0, 10**6)),
    st.binary(max_size=200),
    st.just(json.dumps({"user_id": "x", "destination": 5}).encode()),
    st.builds(lambda n, extra: job_body(n, **extra), st.integers(0, 10**6), _fields),
    # lone surrogates, as JSON escapes (json.dumps writes them; they decode to str)
    st.builds(
        lambda n, where: job_body(n, **{where: "x\ud800"}),  # json.dumps writes "\\ud800"
        st.integers(0, 10**6),
        st.sampled_from(["text_message", "destination"]),
    ),
)


@pytest.mark.fault
@hsettings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(_bodies, _properties), min_size=5, max_size=25))
def test_any_publish_ends_sent_or_dead_lettered_and_the_worker_stays_up(
    make_env: Callable[..., dict[str, str]], messages: list[tuple[bytes, dict[str, Any]]]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="wa-trio-prop-"))
    env = make_env(
        WHATSAPP_QUEUE_NAME=f"prop.{suffix}.q",
        WHATSAPP_EXCHANGE=f"prop.{suffix}.x",
        WHATSAPP_PREFETCH_COUNT="10",
        WHATSAPP_SESSION_PATH=str(folder / "session"),
        WHATSAPP_DRY_RUN_FILE=str(folder / "sent.jsonl"),
        WHATSAPP_ADMIN_TOKEN="prop-token-0123456789",
    )
    settings = Settings.from_env(env)
    # distinct message ids: a repeated id with another body is (rightly) a conflict
    messages = [
        (body, {**props, "message_id": _distinct(i, props["message_id"])})
        if "message_id" in props
        else (body, props)
        for i, (body, props) in enumerate(messages)
    ]

    async def scenario() -> None:
        try:
            async with trio.open_nursery() as nursery:
                worker: Worker = await nursery.start(
                    lambda task_status: run_worker(
                        settings, handle_signals=False, task_status=task_status
                    )
                )
                await raw_publish_async(settings, messages)
                await wait_for(
                    lambda: _settled(worker) + _processed(worker, "duplicate") >= len(messages),
                    timeout=30,
                    what=f"{len(messages)} jobs settled",
                )
                assert worker.pipeline.statistics().connected
                assert await queue_count(settings, settings.queue_name) == 0
                sent = len(sent_records(settings.dry_run_file))
                dead = await queue_count(settings, settings.dlq_name)
                duplicates = _processed(worker, "duplicate")
                assert sent + dead + duplicates == len(messages)
                await publish_many(settings, [job_body(7)], message_ids=["valid-after"])
                await wait_for(
                    lambda: len(sent_records(settings.dry_run_file)) == sent + 1,
                    what="a valid job after them is sent",
                )
                worker.stop()
        finally:
            await delete_topology(settings)

    try:
        trio.run(scenario)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _distinct(index: int, message_id: str | bytes) -> str | bytes:
    """Distinct message ids (a repeated id with another body is, rightly, a conflict), in the
    type they were drawn in."""
    if isinstance(message_id, bytes):
        return (b"%d-" % index + message_id)[:200]
    return f"{index}-{message_id}"[:200]


def test_hypothesis_and_attrs_are_importable() -> None:  # keeps imports honest for mypy
    assert attrs.has(Settings)
