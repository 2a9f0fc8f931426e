"""Scheduled sends on the real broker: parked in durable wait queues, never held in the
worker, on time after a worker restart (the broker restart is in tests/fault)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import (
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    sent_records,
    wait_for,
)
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.worker.app import Worker


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_a_scheduled_job_waits_in_the_broker_and_arrives_on_time(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    due = time.time() + 6.5
    await publish_many(
        topology,
        [job_body(1, send_at=datetime.fromtimestamp(due, UTC).isoformat()), job_body(2)],
        message_ids=["later", "now"],
    )
    await wait_for(lambda: len(sent_records(topology.dry_run_file)) == 1, what="now sent")
    assert job_metric(worker, "worker_jobs_processed_total", status="scheduled")
    await wait_for(lambda: len(sent_records(topology.dry_run_file)) == 2, timeout=20, what="later")
    later = next(r for r in sent_records(topology.dry_run_file) if r["job_key"] == "later")
    error = later["sent_at"] - due
    print(f"\nscheduled 6.5 s ahead: sent {error * 1000:+.0f} ms from its time")
    assert -0.05 <= error < 1.5


async def test_a_schedule_too_far_ahead_is_dead_lettered(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_SCHEDULE_MAX="1h"))
    delete_after(settings)
    await start_worker(settings)
    await publish_many(settings, [job_body(1, send_at=_at(7200))], message_ids=["far"])

    async def dead_lettered() -> bool:
        letters = await drain_queue(settings, settings.dlq_name)
        return [m.header.headers["x-error-code"] for m in letters] in (
            ["schedule_too_far"],
            [b"schedule_too_far"],
        )

    await wait_for(dead_lettered, what="schedule_too_far")
    assert sent_records(settings.dry_run_file) == []


async def test_a_scheduled_job_survives_a_worker_restart(topology: Settings) -> None:
    due = time.time() + 4
    await publish_many(
        topology,
        [job_body(1, send_at=datetime.fromtimestamp(due, UTC).isoformat())],
        message_ids=["restart"],
    )

    async def run_until(done: Callable[[Worker], bool], what: str) -> None:
        async with trio.open_nursery() as nursery:
            worker: Worker = await nursery.start(
                lambda task_status: run_worker(
                    topology, handle_signals=False, task_status=task_status
                )
            )
            await wait_for(lambda: done(worker), timeout=20, what=what)
            worker.stop()

    def parked(worker: Worker) -> bool:
        return bool(job_metric(worker, "worker_jobs_processed_total", status="scheduled"))

    await run_until(parked, "the first worker parked it")  # then it stops
    await run_until(lambda _: bool(sent_records(topology.dry_run_file)), "sent by the next one")
    [record] = sent_records(topology.dry_run_file)
    assert record["job_key"] == "restart"
    assert -0.05 <= record["sent_at"] - due < 1.5
