"""Status events on the real broker, validated against docs/status-event.schema.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import trio
from neonize.events import ConnectedEv, ReceiptEv

from tests.conftest import DeleteAfter, StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    EventTap,
    job_body,
    publish_many,
    sent_records,
    wait_for,
)
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.events.status import make_event
from wa_trio.run import run_worker
from wa_trio.worker.app import Worker

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "status-event.schema.json").read_text()
)


def test_schema_accepts_every_kind_and_rejects_a_bad_one() -> None:
    for status, extra in [
        ("sent", {"whatsapp_message_id": "3EB0"}),
        ("delivered", {"whatsapp_message_id": "3EB0"}),
        ("failed", {"code": "x"}),
        ("retrying", {"code": "x", "retry": 1}),
    ]:
        jsonschema.validate(
            make_event(status, job_key="k", user_id=None, **extra),  # type: ignore[arg-type]
            SCHEMA,
        )
    bad = make_event("failed", job_key="k", user_id=None)  # no code
    try:
        jsonschema.validate(bad, SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a failed event without code passed the schema")


async def test_sent_failed_delivered_read_events(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    tap = EventTap(settings)
    events = tap.events
    delete_after(settings, [tap.queue])
    await tap.bind()
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, not_on_whatsapp={"+5511900000000"})
    worker = await start_worker(settings, transport=transport)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await publish_many(
        settings,
        [job_body(1), b"{bad", job_body(2, destination="+5511900000000")],
        message_ids=["ok-1", "bad-1", "no-1"],
    )
    await wait_for(lambda: tap.at_least(3), what="3 events")
    by_key = {e["job_key"]: e for e in events}
    assert by_key["ok-1"]["status"] == "sent"
    assert by_key["bad-1"] == {
        **by_key["bad-1"],
        "status": "failed",
        "code": "invalid_json",
        "user_id": None,
    }
    assert by_key["no-1"]["code"] == "not_on_whatsapp"
    wid = by_key["ok-1"]["whatsapp_message_id"]
    assert wid and wid == "3EB0" + "1".zfill(16)
    # each receipt twice: a person's phone and their linked desktop both answer (and a
    # group's members each do): one event per job and status
    for kind in (ReceiptEv.ReceiptType.DELIVERED, ReceiptEv.ReceiptType.READ) * 2:
        await trio.to_thread.run_sync(
            clients[0].fire,
            ReceiptEv(MessageIDs=[wid, "not-ours"], Type=kind, Timestamp=1_700_000_500),
        )
    await wait_for(lambda: tap.at_least(5), what="delivered and read")
    await trio.to_thread.run_sync(  # a marker after all of them, mapped in order
        clients[0].fire,
        ReceiptEv(MessageIDs=["marker"], Type=ReceiptEv.ReceiptType.READ, Timestamp=1),
    )
    unmatched = "whatsapp_receipts_unmatched_total"
    await wait_for(  # "not-ours" delivered and read once each, then the marker
        lambda: worker.metrics.registry.get_sample_value(unmatched) == 3,
        what="every receipt mapped",
    )
    statuses = [e["status"] for e in events if e["job_key"] == "ok-1"]
    assert statuses == ["sent", "delivered", "read"]
    read = next(e for e in events if e["status"] == "read")
    assert read["user_id"] == "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"
    assert read["timestamp"].startswith("2023-11-14T22:")
    for event in events:
        jsonschema.validate(event, SCHEMA)

    def published() -> dict[str, float | None]:
        registry = worker.metrics.registry
        return {
            kind: registry.get_sample_value("whatsapp_status_events_total", {"status": kind})
            for kind in ("sent", "delivered", "read", "failed", "retrying")
        }

    # counted once confirmed (the tap may see an event just before its confirm arrives)
    expected = {"sent": 1.0, "delivered": 1.0, "read": 1.0, "failed": 2.0, "retrying": 0.0}
    await wait_for(lambda: published() == expected, what=f"status metrics {expected}")
    registry = worker.metrics.registry
    assert registry.get_sample_value("whatsapp_status_events_pending") == 0
    assert registry.get_sample_value("whatsapp_status_events_dropped_total") == 0


async def test_retrying_event_carries_code_and_count(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(
        make_env(WHATSAPP_DRY_RUN_FAIL_RATE="1", WHATSAPP_RETRY_DELAYS="100ms")
    )
    tap = EventTap(settings)
    events = tap.events
    delete_after(settings, [f"{settings.queue_name}.retry.100ms", tap.queue])
    await tap.bind()
    await start_worker(settings)
    await publish_many(settings, [job_body(1)], message_ids=["r-1"])
    await wait_for(lambda: tap.at_least(2), what="retrying then failed")
    assert [(e["status"], e.get("code"), e.get("retry")) for e in events] == [
        ("retrying", "simulated_failure", 1),
        ("failed", "retries_exhausted", None),
    ]
    for event in events:
        jsonschema.validate(event, SCHEMA)


async def test_send_wait_prints_the_jobs_events(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    start_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = cli_settings
    delete_after(settings)
    await start_worker(settings)
    started = trio.current_time()
    code = await trio.to_thread.run_sync(
        main,
        [
            "send",
            "--destination",
            "+5511999999999",
            "--text",
            "hello",
            "--message-id",
            "wait-1",
            "--wait",
            "--wait-seconds",
            "60",
        ],
    )
    took = trio.current_time() - started
    assert code == 0
    # dry-run sends are never delivered or read: "sent" ends the wait (it used to sit
    # silent for the whole 60 s)
    assert took < 15, took
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["status"], e["job_key"]) for e in printed] == [("sent", "wait-1")]
    jsonschema.validate(printed[0], SCHEMA)


async def test_graceful_stop_publishes_the_last_jobs_events(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
) -> None:
    """Stopped mid-stream, while events are still buffered: every job sent has its event."""
    settings = Settings.from_env(make_env(WHATSAPP_PREFETCH_COUNT="100"))
    tap = EventTap(settings)
    total = 3000
    delete_after(settings, [tap.queue])
    await tap.bind()
    await publish_many(
        settings,
        [job_body(i) for i in range(total)],
        message_ids=[f"g-{i}" for i in range(total)],
    )
    async with trio.open_nursery() as nursery:
        worker: Worker = await nursery.start(
            lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
        )
        status = worker.status
        assert status is not None
        await wait_for(lambda: status.pending >= 50, interval=0.001, what="a backlog")
        pending = status.pending
        worker.stop()
    # run_worker has returned: the worker and its connections are gone
    sent_jobs = {r["job_key"] for r in sent_records(settings.dry_run_file)}
    print(f"\nstopped with {pending} events buffered, after {len(sent_jobs)}/{total} sends")
    assert 0 < len(sent_jobs) < total, "the stop came before or after the stream"
    await wait_for(lambda: tap.at_least(len(sent_jobs)), timeout=10, what="sent events")
    assert {e["job_key"] for e in tap.events if e["status"] == "sent"} == sent_jobs
