"""The neonize transport as WhatsApp really behaves (issue 21), on the honest test double
(tests/fakes.py) and, where it can be driven offline, the real client through a closed proxy.
No broker: the transport alone."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from neonize.events import ConnectedEv

from tests.fakes import GO_MAPS_MODEL, FakeClient, fake_neonize_transport
from tests.helpers import wait_for
from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError, TransportError
from wa_trio.core.retry import Backoff
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState as S
from wa_trio.transport import OutgoingMessage
from wa_trio.transport.neonize import NeonizeTransport, new_client
from wa_trio.transport.neonize.store_connects import StoreConnects

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


@pytest.fixture
def neonize_settings(make_env: Callable[..., dict[str, str]]) -> Settings:
    return Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))


async def test_a_lid_answer_still_sends_to_the_phone_number(neonize_settings: Settings) -> None:
    """1. The look-up may answer with the contact's LID: only "is on WhatsApp" is used; the
    message goes to the number's JID (whatsmeow maps it), and the cache keeps the number."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients, answer_with_lid=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
        for _ in range(2):  # the second send comes from the cache
            await transport.send(OutgoingMessage("+5511999999999", "hi", UID, "k"))
        assert [to for to, _ in clients[0].sent] == ["5511999999999", "5511999999999"]
        assert clients[0].lookups == ["+5511999999999"]
        nursery.cancel_scope.cancel()


async def test_the_canonical_number_whatsapp_answers_is_the_one_sent_to(
    neonize_settings: Settings,
) -> None:
    """An older Brazilian mobile is registered without its 9th digit: whatsmeow's IsOnWhatsApp
    answers with that JID, and the message goes to it (and is cached so), not to the digits
    of the job."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        clients[0].canonical["+5511987654321"] = "551187654321"
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
        for _ in range(2):
            await transport.send(OutgoingMessage("+5511987654321", "oi", UID, "k"))
        assert [to for to, _ in clients[0].sent] == ["551187654321", "551187654321"]
        assert clients[0].lookups == ["+5511987654321"]
        nursery.cancel_scope.cancel()


def test_number_cache_rows_of_the_old_schema_are_dropped(tmp_path: Path) -> None:
    import sqlite3

    from wa_trio.stores.sqlite.numbers import NumberCache

    db = sqlite3.connect(tmp_path / "numbers.db")
    db.execute(
        "CREATE TABLE numbers (number TEXT PRIMARY KEY, on_whatsapp INTEGER NOT NULL, "
        "jid_user TEXT NOT NULL, checked_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO numbers VALUES ('+5511999999999', 1, '98765432101234', 9e12)")
    db.commit()
    db.close()
    cache = NumberCache(tmp_path / "numbers.db", ttl=1e12)
    try:
        assert cache.get("+5511999999999") is None  # the LID row is gone
    finally:
        cache.close()


async def test_a_lookup_error_is_a_transient_send_error(neonize_settings: Settings) -> None:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients, lookup_error="500 5511999999999")
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
        await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
        with pytest.raises(SendError) as info:
            await transport.send(OutgoingMessage("+5511999999999", "hi", UID, "k"))
        assert info.value.code == "lookup_failed" and info.value.transient
        assert "5511999999999" not in info.value.message  # masked
        nursery.cancel_scope.cancel()


async def test_codes_that_stop_coming_restart_the_login(neonize_settings: Settings) -> None:
    """3. whatsmeow stops emitting QR codes after ~160 s, silently: no new code for
    ``qr_stale_after`` -> the client is stopped and a fresh login starts."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients, qr_stale_after=0.4)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@first")
        await wait_for(lambda: transport.state is S.WAITING_FOR_LOGIN, what="waiting")
        await wait_for(lambda: clients[0].connects >= 2, timeout=10, what="a fresh login")
        assert clients[0].stops >= 1
        assert transport.login.qr is None  # the dead code is not shown any more
        nursery.cancel_scope.cancel()


async def test_a_failed_connect_stops_the_client_before_backing_off(
    neonize_settings: Settings,
) -> None:
    """7. After connect() raised, stop() before the next attempt."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients, dial_error="dial tcp: refused")
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 3, what="3 attempts")
        assert clients[0].stops >= clients[0].connects - 1
        nursery.cancel_scope.cancel()


async def test_too_many_connects_end_the_transport_for_a_clean_restart(
    neonize_settings: Settings,
) -> None:
    """6. One fd leaks a connect(): past the bound the transport gives up (the worker exits
    non-zero and its supervisor restarts it)."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(
        neonize_settings, clients, dial_error="refused", max_connects=3
    )
    raised: list[TransportError] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
    except* TransportError as group:
        pending: list[BaseException] = [group]
        while pending:
            error = pending.pop()
            if isinstance(error, BaseExceptionGroup):
                pending.extend(error.exceptions)
            elif isinstance(error, TransportError):
                raised.append(error)
    assert raised and "3 connection attempts" in raised[0].message
    assert clients[0].connects == 3


async def test_the_store_connect_budget_is_shared_by_every_account_of_the_process(
    neonize_settings: Settings,
) -> None:
    """Issue 27 (4): on PostgreSQL each connect holds a server backend neonize never closes
    (goneonize/main.go ``getDB``: a new ``sqlstore.New`` per connect, never closed). Two
    accounts draw on one process-wide budget; the connect past it ends the transport."""
    budget = StoreConnects(limit=5)
    raised: list[TransportError] = []
    clients: list[FakeClient] = []
    transports = []
    for _ in range(2):
        transport = fake_neonize_transport(
            neonize_settings, clients, dial_error="refused", max_connects=1000
        )
        transport.store_connects = budget
        transports.append(transport)
    try:
        async with trio.open_nursery() as nursery:
            for transport in transports:
                await nursery.start(transport.run)
    except* TransportError as group:
        raised += [e for e in _leaves(group) if isinstance(e, TransportError)]
    assert raised and "the bound is 5" in raised[0].message
    assert budget.made == 5 and sum(client.connects for client in clients) == 5


def test_the_budget_keeps_the_smallest_bound_and_none_means_none() -> None:
    budget = StoreConnects()
    budget.bound(None)
    for _ in range(50):
        budget.take()  # SQLite: no bound
    budget.bound(30)
    budget.bound(60)
    assert budget.limit == 30
    with pytest.raises(TransportError):
        budget.take()


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for error in group.exceptions for leaf in _leaves(error)]
    return [group]


async def test_a_pair_code_is_asked_only_while_waiting_for_login(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_PAIR_PHONE="+55 11 98888-7777")
    )
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@QR")
        await wait_for(lambda: transport.login.pair_code == "ABCD-EFGH", what="pair code")
        nursery.cancel_scope.cancel()


def test_two_clients_on_one_database_get_distinct_go_keys(tmp_path: Path) -> None:
    """5. neonize keys Go-side clients by uuid (default: the name): a second NewClient on the
    same database would share the key, and the first one's finalizer would stop the second."""
    database = str(tmp_path / "whatsapp.db")
    first, second = new_client(database), new_client(database)
    assert first.uuid != second.uuid
    assert first.name == second.name == database


def test_importing_neonize_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    """9. neonize's import configures the root logger (INFO on stderr); we put it back."""
    code = textwrap.dedent(
        f"""
        import logging, sys
        root = logging.getLogger()
        before = (list(root.handlers), root.level)
        from wa_trio.transport.neonize import new_client
        new_client({str(tmp_path / "w.db")!r})
        sys.exit(0 if (list(root.handlers), root.level) == before else 1)
        """
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_a_stuck_neonize_thread_does_not_hang_the_exit() -> None:
    """4. A non-daemon thread still blocked (neonize's QR worker in Go) after the run: the CLI
    flushes and exits with the intended code instead of hanging."""
    code = textwrap.dedent(
        """
        import threading
        from wa_trio.cli.main import leave
        threading.Thread(target=threading.Event().wait, name="neonize-qr").start()
        leave(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, timeout=30)
    assert result.returncode == 3


@pytest.mark.real_client
async def test_real_client_offline_lifecycle_fd_count_stays_bounded(
    neonize_settings: Settings,
) -> None:
    """The real neonize client, offline through the closed proxy: connect fails, the client
    is stopped, the worker backs off; stop during the back-off is prompt; the open fds after
    N failed connects are counted (neonize 0.5.2 leaks one a connect: MAX_CONNECTS bounds it)."""
    transport = NeonizeTransport(
        attrs.evolve(neonize_settings, connect_max_failures=1000),  # the budget: its own test
        Redactor(True),
        backoff=Backoff(initial=0.02, cap=0.05),
        qr_out=io.StringIO(),
        max_connects=1000,
    )
    fds_before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: transport.connect_attempts >= 20, timeout=60, what="20 attempts")
        assert transport.statistics().state in {S.DISCONNECTED, S.CONNECTING}
        stopped_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - stopped_at < 6  # bounded stop (STOP_TIMEOUT)
    leaked = len(os.listdir("/proc/self/fd")) - fds_before
    print(f"\n{transport.connect_attempts} failed connects: {leaked} more open fds")
    assert leaked <= transport.connect_attempts + 5


def test_go_filters_neonize_logs_below_warnings() -> None:
    """Issue 27 (10): the level neonize's connect() hands to Go is computed from the module
    logger's own level, as client.py does (``LogLevel.from_logging(log.level).level``); Go
    drops lines under it (goneonize/utils/log.go ``NewLogger``; "" meant everything)."""
    import logging

    from neonize.utils.enum import LogLevel

    from wa_trio.transport.neonize.library import _route_neonize_logs

    neonize_log = logging.getLogger("neonize.client")  # client.py's ``log``
    before = neonize_log.level
    try:
        neonize_log.setLevel(logging.NOTSET)
        assert LogLevel.from_logging(neonize_log.level).level == b""  # the old hand-over
        _route_neonize_logs()
        assert LogLevel.from_logging(neonize_log.level).level == b"WARN"
    finally:
        neonize_log.setLevel(before)


async def test_a_stop_that_came_too_early_is_sent_again_until_connect_returns(
    neonize_settings: Settings,
) -> None:
    """Issue 27, item 9: a stop before goneonize's ``Neonize`` wrote the client's
    ``StopSignal`` cancels nothing (main.go): connect() keeps blocking. After a logout the
    transport stops again every second until connect() returned (before: one stop, and the
    watchdog waited for ever), then detaches neonize's finalizer (client.py
    ``NewClient.__init__``: a dropped client would call Go's ``Stop`` from the garbage
    collector, outside the guard of the client maps)."""
    from neonize.events import LoggedOutEv

    async def scenario() -> bytes:
        clients: list[FakeClient] = []
        transport = fake_neonize_transport(neonize_settings, clients, early_stops_ignored=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
            client = clients[0]
            await trio.to_thread.run_sync(client.fire, ConnectedEv())
            await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
            assert client._stop_finalizer.alive  # neonize's, until we stopped the client
            await trio.to_thread.run_sync(client.fire, LoggedOutEv(OnConnect=False, Reason=2))
            await wait_for(client.stopped.is_set, timeout=10, what="connect() returned")
            assert client.stops == 2 and transport.stop_retries == 1
            await wait_for(lambda: not client._stop_finalizer.alive, what="finalizer detached")
            nursery.cancel_scope.cancel()
        return client.uuid

    uuid = await scenario()  # the client and its transport are dropped here
    gc.collect()
    assert uuid not in GO_MAPS_MODEL.finalizer_stops  # collected without a second Go Stop


async def test_a_finished_qr_login_holds_and_gives_back_a_reader(
    neonize_settings: Settings,
) -> None:
    """The hooks on a real transport: the QR channel's last status call back (neonize's
    ``NewClient.__onLoginStatus``, which only prints) takes a reader on the Go thread, event 0
    gives it back; nothing stays held (a leak would keep every other account's start out)."""
    from wa_trio.transport.neonize.go_maps import GO_MAPS

    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@first")
        await wait_for(lambda: transport.state is S.WAITING_FOR_LOGIN, what="waiting")
        await wait_for(lambda: GO_MAPS._readers == 0, what="no reader during the QR phase")
        await trio.to_thread.run_sync(clients[0].finish_login)
        assert transport._reads is not None and transport._reads.reads_seen == 1
        await wait_for(lambda: GO_MAPS._readers == 0, what="the reader given back")
        nursery.cancel_scope.cancel()


def _connects_reach(client: FakeClient, count: int) -> bool:
    return client.connects == count


async def test_a_server_error_receipt_is_not_a_failed_dial(neonize_settings: Settings) -> None:
    """Issue 27, item 10: goneonize cannot encode a ``server-error`` receipt (its required
    ``Type`` is left unset, utils/encoder.go ``EncodeReceipts``), so connect() raises "proto:
    required field neonize.Receipt.Type not set" while whatsmeow stays connected. The transport
    stops that client and connects again without back-off, counts no failed connect and does
    not report a dial failure (before: dial_failed, counted towards WHATSAPP_CONNECT_MAX_
    FAILURES, so a few such receipts marked the account failed)."""
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(neonize_settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        client = clients[0]
        for round_ in range(1, neonize_settings.connect_max_failures + 2):
            await trio.to_thread.run_sync(client.fire, ConnectedEv())
            await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
            client.receive_server_error_receipt()
            await wait_for(partial(_connects_reach, client, round_ + 1), what="connected again")
        assert transport.events_lost == neonize_settings.connect_max_failures + 1
        assert transport.failures_in_a_row == 0
        assert "dial_failed" not in {kind for _, _, kind in transport.transitions}
        assert transport.state is not S.FAILED
        nursery.cancel_scope.cancel()
