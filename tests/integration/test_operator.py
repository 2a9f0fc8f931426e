"""What an operator meets (issue 18): the /login token, state changes as POST, a prompt stop
while WhatsApp is away, one-line start-up errors, DLQ triage that terminates."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable

import attrs
import httpx
import pytest
import trio
from neonize.events import ConnectedEv, DisconnectedEv, LoggedOutEv

from tests.conftest import DeleteAfter, StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    delete_topology,
    job_body,
    job_metric,
    publish_many,
    queue_count,
    wait_for,
)
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.bus.dlq import list_dead_letters, replay
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.stores.sqlite.ledger import Ledger
from wa_trio.transport import ConnectionState as S

TOKEN = "operator-token-0123456789"


def _basic(token: str, user: str = "operator") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def test_login_needs_the_operator_token(
    topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, admin_token=TOKEN)
    worker = await start_worker(settings)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        refused = await http.get("/login")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert (await http.get("/login", headers=_basic("wrong-token-0123456"))).status_code == 401
        page = await http.get("/login", headers=_basic(TOKEN))
        assert page.status_code == 200 and "Nothing to link" in page.text  # dry-run
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/login", headers=bearer)).status_code == 200
        assert (await http.post("/login/relogin")).status_code == 401
        for open_route in ("/healthz", "/readyz", "/livez", "/metrics"):
            assert (await http.get(open_route)).status_code in (200, 503), open_route
        assert (await http.get("/livez")).status_code == 200


async def test_looking_at_login_never_starts_a_login_only_a_post_does(
    topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, admin_token=TOKEN, transport="neonize")
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    worker = await start_worker(settings, transport=transport)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, LoggedOutEv(OnConnect=False, Reason=2))
    await wait_for(lambda: transport.state is S.LOGGED_OUT, what="logged out")
    # the transport stops the logged-out client itself (a stop from here would be outside
    # the guard of neonize's client maps: tests/fakes.py GoMapsModel)
    await wait_for(clients[0].stopped.is_set, what="the client stopped")
    async with httpx.AsyncClient(base_url=worker.http_url, headers=_basic(TOKEN)) as http:
        for _ in range(5):  # looking, again and again, changes nothing
            page = await http.get("/login")
            assert "Logged out" in page.text and "method='post'" in page.text
        assert len(clients) == 1 and transport.state is S.LOGGED_OUT
        answer = await http.post("/login/relogin")
        assert answer.status_code == 303
    await wait_for(lambda: len(clients) == 2, what="a new login after the POST")


async def test_stop_is_prompt_while_whatsapp_is_unreachable(
    topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, shutdown_grace=10.0, transport="neonize")
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)  # never connects
    worker = await start_worker(settings, transport=transport)
    await publish_many(settings, [job_body(1)], message_ids=["waits"])

    async def delivered() -> bool:
        return await queue_count(settings, settings.queue_name) == 0

    await wait_for(delivered, what="the job is in the worker's hands")
    started = time.monotonic()
    worker.stop()
    await wait_for(lambda: not worker.pipeline.connected, timeout=8, what="stopped")
    assert time.monotonic() - started < 3, "the stop waited for WhatsApp"
    # never sent, so never "maybe sent": no `sending` row (WHATSAPP_AMBIGUOUS=skip would
    # otherwise ack it unsent on the next run)
    ledger = Ledger(settings.ledger_db)
    try:
        found = ledger.peek("waits")
    finally:
        ledger.close()
    assert found is None or found.state != "sending", found


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_port_in_use_is_one_line_and_exit_2(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _taken_port() as sock:
        monkeypatch.setenv("HTTP_PORT", str(sock.getsockname()[1]))
        assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("wa-trio: cannot")]) == 1


async def test_a_second_worker_on_the_same_session_is_refused(
    cli_settings: Settings, start_worker: StartWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = await start_worker(cli_settings)
    await wait_for(lambda: worker.pipeline.connected, what="the first worker consumes")
    try:
        code = await trio.to_thread.run_sync(main, ["run"])
    finally:
        worker.stop()
        await wait_for(lambda: not worker.pipeline.connected, what="the first worker stopped")
        await delete_topology(cli_settings)
    assert code == 2
    assert "another wa-trio process uses the session folder" in capsys.readouterr().err


async def test_a_deleted_session_folder_turns_health_red(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        await wait_for(lambda: worker.pipeline.connected, what="consumer up")
        await trio.to_thread.run_sync(shutil.rmtree, topology.session_path)

        async def red() -> bool:
            response = await http.get("/healthz")
            return response.status_code == 503 and "session" in response.json()["failing"]

        await wait_for(red, what="health red")


async def test_metrics_are_rendered_once_per_cache_period(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    renders = 0
    original = worker.metrics.exposition

    def counted() -> bytes:
        nonlocal renders
        renders += 1
        rendered: bytes = original()
        return rendered

    worker.metrics.exposition = counted
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        for _ in range(50):
            assert (await http.get("/metrics")).status_code == 200
    assert 1 <= renders <= 3  # 50 scrapes in well under the 1 s cache period


async def test_dlq_triage_survives_odd_headers_and_replay_stops_at_the_count(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    """A job that fails again while a worker runs comes back behind the others: replay takes
    the count at the start and stops there (41 jobs used to read as 113 replays)."""
    settings = Settings.from_env(
        make_env(WHATSAPP_DRY_RUN_FAIL_RATE="1", WHATSAPP_RETRY_DELAYS="1ms")
    )
    delete_after(settings, extra_queues=[f"{settings.queue_name}.retry.1ms"])
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            for i in range(8):
                await amqp.publish(
                    channel,
                    settings.dlx,
                    settings.routing_key,
                    job_body(i),
                    Properties(
                        message_id=f"d-{i}",
                        headers={"x-error-code": "send_failed", "x-retry-count": "abc"},
                    ),
                )
    letters = await list_dead_letters(settings)
    assert [letter.retry_count for letter in letters] == [0] * 8
    worker = await start_worker(settings)  # every send fails: replayed jobs come back
    with pytest.raises(ValueError, match="limit"):
        await replay(settings, limit=-1)
    report = await replay(settings)
    assert report.replayed == 8
    await wait_for(
        lambda: (job_metric(worker, "worker_jobs_processed_total", status="failed") or 0) >= 8,
        what="all failed again",
    )
    assert json.loads(json.dumps(attrs.asdict(report)))["replayed"] == 8


async def test_a_job_held_when_whatsapp_drops_mid_batch_is_not_left_maybe_sent(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    """WhatsApp drops while a batch is in hand, then a stop: the jobs not sent are left
    unacked with no `sending` row (else WHATSAPP_AMBIGUOUS=skip would ack them unsent later)."""
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_PREFETCH_COUNT="10")
    )
    gate = threading.Event()
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, send_gate=gate)
    worker = await start_worker(settings, transport=transport)
    try:
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await publish_many(settings, [job_body(i) for i in range(3)], [f"b-{i}" for i in range(3)])

        async def delivered() -> bool:
            return await queue_count(settings, settings.queue_name) == 0

        await wait_for(delivered, what="all three in the worker's hands")
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: clients[0].sending == 1, what="the first send in flight")
        await trio.to_thread.run_sync(clients[0].fire, DisconnectedEv())
        await wait_for(lambda: transport.state is S.DISCONNECTED, what="WhatsApp away")
        gate.set()  # the first send completes; the next ones must wait for WhatsApp
        await wait_for(lambda: len(clients[0].sent) == 1, what="the first sent")
        worker.stop()
        await wait_for(lambda: not worker.pipeline.connected, timeout=8, what="stopped")
        ledger = Ledger(settings.ledger_db)
        try:
            states = {key: ledger.peek(key) for key in ("b-0", "b-1", "b-2")}
        finally:
            ledger.close()
        assert states["b-0"] is not None and states["b-0"].state == "sent"
        for key in ("b-1", "b-2"):
            found = states[key]
            assert found is None or found.state != "sending", states
    finally:
        gate.set()
        await delete_topology(settings)
