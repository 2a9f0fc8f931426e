"""The neonize transport without a broker: the real library offline (closed loopback proxy),
and real neonize events through the honest double (tests/fakes.py)."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from neonize.events import (
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID

from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    queue_count,
    wait_for,
)
from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.config.settings import Settings
from wa_trio.core.retry import Backoff
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.pipeline.consumer import PipelineStatistics
from wa_trio.transport import ConnectionState as S
from wa_trio.transport import OutgoingMessage
from wa_trio.transport.neonize import NeonizeTransport, ReceiptInfo, bundled_library
from wa_trio.web import login_page
from wa_trio.web.app import create_app, run_http

TOKEN = "operator-token-0123456789"


async def _none_ready(settings: Settings) -> bool:
    """Every job delivered to the worker (none ready; unacked ones are not counted)."""
    return await queue_count(settings, settings.queue_name) == 0


def _attempted(transport: NeonizeTransport) -> Callable[[], bool]:
    return lambda: transport.statistics().attempts >= 1


def test_bundled_library_is_present() -> None:
    assert bundled_library().exists()


async def test_real_client_offline_backs_off_without_blocking_trio(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    assert settings.proxy and settings.proxy.startswith("http://127.0.0.1:")
    transport = NeonizeTransport(
        settings, Redactor(True), backoff=Backoff(initial=0.2, cap=0.4), qr_out=io.StringIO()
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await nursery.start(transport.run)
        started = trio.current_time()
        await wait_for(lambda: transport.connect_attempts >= 3, timeout=20, what="3 attempts")
        elapsed = trio.current_time() - started
        assert (S.CONNECTING, S.DISCONNECTED, "dial_failed") in transport.transitions
        # two back-off sleeps of at least 0.1 s each happened between the three attempts
        assert elapsed >= 0.2
        # the loop kept running meanwhile (a blocked loop would not tick)
        assert ticks >= int(elapsed / 0.01) // 3
        nursery.cancel_scope.cancel()
    database = settings.session_db
    assert database.exists()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.session_path.stat().st_mode) == 0o700
    kinds = [kind for _, _, kind in transport.transitions]
    assert "dial_failed" in kinds


async def test_second_run_reuses_the_session_file(make_env: Callable[..., dict[str, str]]) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    inodes = []
    for _ in range(2):
        transport = NeonizeTransport(settings, Redactor(True), qr_out=io.StringIO())
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            await wait_for(_attempted(transport), what="one attempt")
            nursery.cancel_scope.cancel()
        inodes.append(settings.session_db.stat().st_ino)
    assert inodes[0] == inodes[1]


async def test_real_neonize_events_drive_every_state(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    clients: list[FakeClient] = []
    receipts: list[ReceiptInfo] = []
    transport = fake_neonize_transport(settings, clients)
    transport.on_receipt = receipts.append
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        client = clients[0]
        assert transport.state is S.CONNECTING

        async def fire(event: object, expected: S) -> None:
            await trio.to_thread.run_sync(client.fire, event)
            await wait_for(lambda: transport.state is expected, timeout=5, what=str(expected))

        await trio.to_thread.run_sync(client.fire_qr, "2@abc,def,ghi")
        await wait_for(lambda: transport.state is S.WAITING_FOR_LOGIN, what="waiting")
        # linked, but whatsmeow restarts the stream (515) first: not connected until Connected
        await fire(
            PairStatusEv(ID=JID(User="5511988887777", Server="s.whatsapp.net")), S.CONNECTING
        )
        assert transport.login.linked_as == "+5511988887777"
        await fire(ConnectedEv(), S.CONNECTED)
        await fire(KeepAliveTimeoutEv(ErrorCount=2), S.DISCONNECTED)
        await fire(KeepAliveRestoredEv(), S.CONNECTED)
        await fire(DisconnectedEv(), S.DISCONNECTED)
        await fire(ConnectedEv(), S.CONNECTED)
        await trio.to_thread.run_sync(
            client.fire,
            ReceiptEv(
                MessageIDs=["3EB0X"], Type=ReceiptEv.ReceiptType.READ, Timestamp=1_700_000_100
            ),
        )
        await wait_for(lambda: bool(receipts), what="receipt")
        assert receipts[0] == ReceiptInfo(("3EB0X",), "read", 1_700_000_100.0)
        # the banned states, driven by real events (after each, the client is stopped: see below)
        await fire(ConnectFailureEv(Reason=3, Message="banned"), S.BANNED)
        await wait_for(client.stopped.is_set, what="client stopped after a connect failure")
        assert not transport.statistics().attempts > 1  # banned: no reconnect by itself
        transport.request_relogin()
        await wait_for(lambda: len(clients) == 2, what="fresh client")
        client = clients[1]
        await wait_for(lambda: client.connects == 1, what="connect")
        await fire(ConnectedEv(), S.CONNECTED)
        await fire(TemporaryBanEv(Code=TemporaryBanEv.BLOCKED_BY_USERS, Expire=3600), S.BANNED)
        transport.request_relogin()
        await wait_for(lambda: len(clients) == 3, what="fresh client")
        client = clients[2]
        await wait_for(lambda: client.connects == 1, what="connect")
        await fire(ConnectedEv(), S.CONNECTED)
        await fire(StreamReplacedEv(), S.DISCONNECTED)
        transport.request_relogin()
        await wait_for(lambda: len(clients) == 4, what="fresh client")
        client = clients[3]
        await wait_for(lambda: client.connects == 1, what="connect")
        await fire(ConnectedEv(), S.CONNECTED)
        await fire(LoggedOutEv(OnConnect=False, Reason=2), S.LOGGED_OUT)
        # whatsmeow stops reconnecting but its connect() would block for ever: the transport
        # stops the client itself (the test used to call client.stop(), hiding the hang)
        await wait_for(client.stopped.is_set, what="client stopped after the logout")
        await wait_for(
            lambda: transport.statistics().state is S.LOGGED_OUT, what="waiting for an operator"
        )
        assert client.connects == 1 and len(clients) == 4  # no reconnect by itself
        transport.request_relogin()
        await wait_for(
            lambda: len(clients) == 5 and clients[4].connects == 1,
            what="fresh client after relogin",
        )
        nursery.cancel_scope.cancel()
    assert clients[4].stopped.is_set()  # shutdown stopped the client cleanly


async def test_qr_renders_to_terminal_and_login_page(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    terminal = io.StringIO()
    transport.qr_out = terminal
    metrics = Metrics(settings.queue_name, settings.dlq_name)

    class Down:
        connected = False

        def statistics(self) -> PipelineStatistics:
            return PipelineStatistics(connected=False, connections=0, ledger_problem=None)

    app = create_app(
        consumer=Down(),
        monitor=BrokerMonitor(settings, metrics),
        transport=transport,
        metrics=metrics,
        admin_token=TOKEN,
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        urls = await nursery.start(run_http, app, "127.0.0.1", 0, shutdown)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@QRPAYLOAD,xyz")
        await wait_for(lambda: transport.login.qr is not None, what="qr")
        assert "▀" in terminal.getvalue() or "█" in terminal.getvalue()
        async with httpx.AsyncClient(base_url=urls[0], auth=("operator", TOKEN)) as http:
            page = (await http.get("/login")).text
            assert 'http-equiv="refresh"' in page
            svg = re.search(r"<svg.*</svg>", page, re.DOTALL)
            assert svg is not None
            root = ET.fromstring(svg.group())
            assert root.tag.endswith("svg")
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["whatsapp"] == "waiting_for_login"
            await trio.to_thread.run_sync(
                clients[0].fire, PairStatusEv(ID=JID(User="5511988887777"))
            )
            await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
            await wait_for(lambda: transport.state is S.CONNECTED, what="linked")
            page = (await http.get("/login")).text
            assert "linked as +55*******7777" in page
        shutdown.set()
        nursery.cancel_scope.cancel()


async def test_pair_code_login(make_env: Callable[..., dict[str, str]]) -> None:
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_PAIR_PHONE="+55 11 98888-7777")
    )
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@QR")
        await wait_for(lambda: transport.login.pair_code == "ABCD-EFGH", what="pair code")
        page = login_page.render(transport.login_status(), transport.redactor)
        assert "ABCD-EFGH" in page
        assert clients[0].pair_display_names == ["Chrome (Linux)"]  # not "Unknown (Linux)"
        nursery.cancel_scope.cancel()


def test_neonize_pairphone_names_the_client_chrome_from_our_props() -> None:
    """neonize's own ``NewClient.PairPhone`` (client.py) with only the Go call replaced: the
    display name it sends, from our device properties alone and with our explicit client."""
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import PairPhoneParams, PairPhoneReturnFunction

    from wa_trio.transport.neonize.library import pair_client, send_only_props

    sent: list[PairPhoneParams] = []

    class Go:
        def PairPhone(self, _uuid: bytes, payload: bytes, _size: int) -> bytes:
            sent.append(PairPhoneParams.FromString(payload))
            return bytes(PairPhoneReturnFunction(Code="ABCD-EFGH").SerializeToString())

    holder = object.__new__(NewClient)
    holder.uuid = b"test"
    holder.device_props = send_only_props()
    holder._NewClient__client = Go()
    assert NewClient.PairPhone(holder, "5511988887777", True) == "ABCD-EFGH"
    assert NewClient.PairPhone(holder, "5511988887777", True, **pair_client()) == "ABCD-EFGH"
    assert [p.clientDisplayName for p in sent] == ["Chrome (Linux)", "Chrome (Linux)"]
    assert {p.clientType for p in sent} == {1}  # whatsmeow's PairClientChrome


async def test_typing_simulation_shows_composing_before_the_send(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_TYPING="on"))
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
        started = trio.current_time()
        result = await transport.send(OutgoingMessage("+5511999999999", "hi", "u", "k"))
        assert trio.current_time() - started >= 1.0  # at least a second of "typing..."
        assert clients[0].presences == [("5511999999999", "CHAT_PRESENCE_COMPOSING")]
        assert clients[0].sent == [("5511999999999", "hi")]
        assert result.message_id.startswith("3EB0")
        nursery.cancel_scope.cancel()


def test_a_missing_bundled_library_is_refused_not_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    from wa_trio.transport.neonize import TransportError, check_bundled_library

    monkeypatch.setattr(platform, "machine", lambda: "sparc64")
    with pytest.raises(TransportError, match="will not let neonize download"):
        check_bundled_library()


def test_login_command_offline_gives_up_with_exit_1(
    make_env: Callable[..., dict[str, str]],
) -> None:
    env = make_env(WHATSAPP_TRANSPORT="neonize")
    result = subprocess.run(
        [sys.executable, "-m", "wa_trio", "login", "--timeout", "1.5"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "not linked within 1.5s" in result.stderr
    assert Path(env["WHATSAPP_SESSION_PATH"], "whatsapp.db").exists()


async def test_a_login_whose_client_ignores_stop_is_abandoned_for_a_new_client(
    make_env: Callable[..., dict[str, str]],
) -> None:
    """The QR codes ran out and the Go side ignores ``stop()``: connect() never returns. The
    login is restarted on a new client anyway (before: /login showed no code for ever)."""
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(
        settings, clients, qr_stale_after=0.4, abandon_after=0.3, ignores_stop_while_waiting=True
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@first")
        await wait_for(lambda: transport.state is S.WAITING_FOR_LOGIN, what="waiting")
        # no new code: the codes ran out; stop() is ignored; a new client takes over
        await wait_for(lambda: len(clients) == 2 and clients[1].connects == 1, what="new client")
        assert clients[0].stops >= 1 and not clients[0].stopped.is_set()  # still stuck
        assert transport.abandoned == 1
        await trio.to_thread.run_sync(clients[1].fire_qr, "2@second")
        await wait_for(lambda: transport.login.qr == "2@second", what="a code again")
        clients[0].stopped.set()  # let the test's stuck thread end
        nursery.cancel_scope.cancel()
