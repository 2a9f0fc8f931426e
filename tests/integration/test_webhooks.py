"""Signed status webhooks against a loopback receiver of the test's own (issue 15)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

from tests.conftest import DeleteAfter, StartWorker, closed_port
from tests.helpers import (
    delete_topology,
    job_body,
    job_metric,
    publish_many,
    stop_worker,
    wait_for,
)
from wa_trio.config.settings import Settings
from wa_trio.events.status_webhook import SIGNATURE, TIMESTAMP, verify
from wa_trio.run import run_worker
from wa_trio.worker.app import Worker

SECRET = "webhook-secret-0123456789"


class Receiver:
    """A webhook receiver: answers from ``answers`` (then 200), records what it got, and
    verifies each signature as a real receiver would."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []
        self.app = QuartTrio("receiver")

        @self.app.post("/hook")
        async def hook() -> tuple[str, int]:
            raw = await request.get_data()
            body = raw if isinstance(raw, bytes) else raw.encode()
            self.calls.append(
                {
                    "event": json.loads(body),
                    "verified": verify(
                        SECRET,
                        request.headers.get(TIMESTAMP, ""),
                        request.headers.get(SIGNATURE, ""),
                        body,
                        now=time.time(),
                    ),
                }
            )
            return "", self.answers.pop(0) if self.answers else 200

    async def serve(self, port: int, *, task_status: trio.TaskStatus[None]) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = config.errorlog = None
        await serve(self.app, config, task_status=task_status)  # type: ignore[arg-type]

    def delivered(self, status: str = "sent") -> list[dict[str, Any]]:
        return [c for c in self.calls if c["event"]["status"] == status]


def _env(make_env: Callable[..., dict[str, str]], port: int) -> Settings:
    return Settings.from_env(
        make_env(
            WHATSAPP_STATUS_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
            WHATSAPP_STATUS_WEBHOOK_SECRET=SECRET,
        )
    )


def _result(worker: Worker, result: str) -> float:
    return (
        worker.metrics.registry.get_sample_value(
            "whatsapp_status_webhook_deliveries_total", {"result": result}
        )
        or 0.0
    )


async def test_500_twice_then_200_is_one_delivery_signed(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    port = closed_port()
    receiver = Receiver([500, 500])
    await nursery.start(receiver.serve, port)
    settings = _env(make_env, port)
    worker = await start_worker(settings)
    worker.webhook.backoff.initial = 0.05  # keep the test short; the rules are the same
    delete_after(settings)
    await publish_many(settings, [job_body(1)], message_ids=["w-1"])
    await wait_for(lambda: _result(worker, "delivered") == 1, what="delivered")
    assert _result(worker, "retried") == 2
    assert len(receiver.calls) == 3 and all(c["verified"] for c in receiver.calls)
    assert receiver.calls[-1]["event"]["job_key"] == "w-1"
    assert job_metric(worker, "worker_jobs_processed_total", status="success") == 1


async def test_a_400_is_not_retried(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    port = closed_port()
    receiver = Receiver([400])
    await nursery.start(receiver.serve, port)
    settings = _env(make_env, port)
    worker = await start_worker(settings)
    delete_after(settings)
    await publish_many(settings, [job_body(1)], message_ids=["w-400"])
    await wait_for(lambda: _result(worker, "rejected") == 1, what="rejected")
    with trio.move_on_after(1.0):  # a retry would come within the first backoff step
        await wait_for(lambda: len(receiver.calls) > 1, what="no retry")
    assert len(receiver.calls) == 1 and _result(worker, "retried") == 0


async def test_pending_events_are_delivered_after_a_restart(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    port = closed_port()  # nobody listens yet: the event stays in the outbox
    settings = _env(make_env, port)
    delete_after(settings)
    async with trio.open_nursery() as first:
        worker: Worker = await first.start(
            lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
        )
        await publish_many(settings, [job_body(1)], message_ids=["w-restart"])
        await wait_for(lambda: _result(worker, "retried") >= 1, what="a failed attempt")
        worker.stop()
    receiver = Receiver([])
    await nursery.start(receiver.serve, port)
    async with trio.open_nursery() as second:
        worker = await second.start(
            lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
        )
        await wait_for(lambda: len(receiver.delivered()) == 1, timeout=20, what="delivered")
        assert receiver.delivered()[0]["event"]["job_key"] == "w-restart"
        assert receiver.delivered()[0]["verified"]
        worker.stop()


async def test_with_postgresql_the_holder_of_the_account_delivers_its_events(
    make_env: Callable[..., dict[str, str]], pg_store: str, nursery: trio.Nursery
) -> None:
    """Events move from the replica's local outbox into the account's outbox in PostgreSQL;
    the receiver is down while the first replica runs, so they wait there; a replica on
    another host (its own session folder, no local events) takes the account over and
    delivers them, signed, each once."""
    from functools import partial

    from tests.helpers import pg_query

    port = closed_port()
    env = make_env(
        WHATSAPP_STATUS_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
        WHATSAPP_STATUS_WEBHOOK_SECRET=SECRET,
        WHATSAPP_STORE=pg_store,
    )
    first_settings = Settings.from_env(env)
    first: Worker = await nursery.start(partial(run_worker, first_settings, handle_signals=False))
    try:
        await publish_many(first_settings, [job_body(i) for i in range(3)],
                           message_ids=["pg-w-0", "pg-w-1", "pg-w-2"])  # fmt: skip

        def in_store() -> bool:
            rows = pg_query(pg_store, "SELECT count(*) FROM wa_trio_webhook_outbox "
                            "WHERE account = 'default'")  # fmt: skip
            return bool(rows[0][0] == 3)

        await wait_for(in_store, what="the events in the store's outbox")
        # the relay deletes locally right after its commit to PostgreSQL: wait for that too
        await wait_for(
            lambda: first.webhook.statistics().local_pending == 0,
            what="nothing left on this volume",
        )
    finally:
        await stop_worker(first)  # it releases the account
    receiver = Receiver([])
    await nursery.start(receiver.serve, port)
    second_settings = Settings.from_env(
        {**env, "WHATSAPP_SESSION_PATH": env["WHATSAPP_SESSION_PATH"] + "-other-host"}
    )
    second: Worker = await nursery.start(partial(run_worker, second_settings, handle_signals=False))
    try:
        await wait_for(lambda: len(receiver.delivered()) == 3, what="delivered by the taker")
        delivered = sorted(c["event"]["job_key"] for c in receiver.delivered())
        assert delivered == ["pg-w-0", "pg-w-1", "pg-w-2"]  # each once (order is per job)
        assert all(c["verified"] for c in receiver.calls)
        await wait_for(lambda: _result(second, "delivered") == 3, what="counted")
        assert pg_query(pg_store, "SELECT count(*) FROM wa_trio_webhook_outbox") == [(0,)]
    finally:
        try:
            await stop_worker(second)
        finally:
            await delete_topology(first_settings)
