"""The neonize transport: the real library offline, and real neonize events through a client
double at the client boundary. WHATSAPP_PROXY always points at a closed loopback port."""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs
import pytest
import trio
from neonize.events import (
    ConnectedEv,
)

from tests.conftest import DeleteAfter, StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    delete_topology,
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    queue_count,
    wait_for,
)
from wa_trio.bus.amqp import retry_queue_name
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.stores.sqlite.ledger import Ledger
from wa_trio.worker.app import Worker

TOKEN = "operator-token-0123456789"


async def _none_ready(settings: Settings) -> bool:
    """Every job delivered to the worker (none ready; unacked ones are not counted)."""
    return await queue_count(settings, settings.queue_name) == 0


@pytest.mark.parametrize("policy", ["resend", "skip"])
async def test_a_send_timeout_is_ambiguous_and_follows_the_policy(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker, policy: str
) -> None:
    """whatsmeow's ErrMessageTimedOut: the message may have gone out. resend: retried (counted
    ambiguous); skip: dead-lettered with send_timed_out, never sent a second time."""
    settings = attrs.evolve(topology, ambiguous=policy, retry_delays=(60.0,))
    retry_queue = retry_queue_name(settings, 60.0)
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(
        settings,
        clients,
        # whatsmeow's text, plus a JID as some of its errors carry: it must not reach headers
        send_error="timed out waiting for message send response (5511999999999@s.whatsapp.net)",
    )
    worker = await start_worker(settings, transport=transport)
    delete_after(settings, [retry_queue])
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await publish_many(settings, [job_body(1)], message_ids=["t-1"])
    await wait_for(
        lambda: job_metric(worker, "worker_jobs_ambiguous_total", action=policy) == 1,
        what=f"one ambiguous {policy}",
    )
    await wait_for(
        lambda: (
            job_metric(
                worker,
                "worker_jobs_processed_total",
                status="retried" if policy == "resend" else "failed",
            )
            == 1
        ),
        what="the job settled",
    )
    dead = await drain_queue(settings, settings.dlq_name)
    retried = await drain_queue(settings, retry_queue)
    codes = [m.header.headers["x-error-code"] for m in dead]
    for message in dead + retried:
        assert b"5511999999999" not in repr(message.header.headers).encode()
    if policy == "skip":
        assert codes in ([b"send_timed_out"], ["send_timed_out"])
        assert retried == []
    else:
        assert dead == []
        assert len(retried) == 1
        assert retried[0].header.headers["x-last-error-code"] in (
            b"send_timed_out",
            "send_timed_out",
        )
    assert job_metric(worker, "worker_jobs_failed_total", error_type="send_timed_out") == 1


async def test_a_hung_send_does_not_hold_shutdown_past_the_grace(
    make_env: Callable[..., dict[str, str]],
) -> None:
    """whatsmeow may wait up to its request timeout for an answer; SIGTERM must still end within
    WHATSAPP_SHUTDOWN_GRACE, the job left unacked (back in the queue, ledger `sending`)."""
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_SHUTDOWN_GRACE="1s")
    )
    gate = threading.Event()
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, send_gate=gate)
    try:
        async with trio.open_nursery() as nursery:
            worker: Worker = await nursery.start(
                lambda task_status: run_worker(
                    settings, transport=transport, handle_signals=False, task_status=task_status
                )
            )
            await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
            await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
            await publish_many(settings, [job_body(1)], message_ids=["hung-1"])
            await wait_for(lambda: clients[0].sending == 1, what="a send in progress")
            stopped_at = trio.current_time()
            worker.stop()
        took = trio.current_time() - stopped_at
        print(f"\nstopped {took:.2f}s after the stop began (grace 1 s)")
        assert took < 1 + 4  # the grace, plus the HTTP server's bounded close
        assert await queue_count(settings, settings.queue_name) == 1  # redelivered later
        ledger = Ledger(settings.ledger_db)
        try:
            entry = ledger.get("hung-1")
        finally:
            ledger.close()
        assert entry is not None and entry.state == "sending"  # the restart calls it ambiguous
    finally:
        gate.set()
        await delete_topology(settings)


async def test_sender_holds_jobs_while_disconnected_then_sends(
    topology: Settings, start_worker: StartWorker
) -> None:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(topology, clients, not_on_whatsapp={"+5511900000000"})
    worker = await start_worker(topology, transport=transport)
    await publish_many(
        topology, [job_body(i) for i in range(5)] + [job_body(9, destination="+5511900000000")]
    )
    await trio.sleep(1.0)
    assert clients and clients[0].sent == []
    assert await queue_count(topology, topology.queue_name) == 6 - topology.prefetch_count
    assert job_metric(worker, "worker_jobs_retried_total") == 0
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: len(clients[0].sent) == 5, what="5 sends")
    assert sorted(text for _, text in clients[0].sent) == [f"job {i}" for i in range(5)]
    assert {user for user, _ in clients[0].sent} == {"5511999999999"}
    assert clients[0].lookups.count("+5511999999999") == 1  # cached after the first look-up
    await wait_for(
        lambda: job_metric(worker, "worker_jobs_failed_total", error_type="not_on_whatsapp") == 1,
        what="not_on_whatsapp counted",
    )
    dead = await drain_queue(topology, topology.dlq_name)
    assert [m.header.headers["x-error-code"] for m in dead] in (
        [b"not_on_whatsapp"],
        ["not_on_whatsapp"],
    )
    await delete_topology(topology)
