"""WHATSAPP_STORE=postgresql on the machine's PostgreSQL (issue 16): migrations under a lock,
the ledger's semantics (the SQLite ledger's, plus the lease epoch as a fencing token), the
lease (advisory lock, epoch, clean release), the fence of a holder whose lease connection is
cut, and the real neonize client keeping its session in the account's schema. Each test has a
database of its own (``pg_store``), dropped afterwards."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.helpers import (
    delete_topology,
    job_body,
    pg_admin,
    pg_query,
    publish_many,
    run_once,
    sample,
    sent_records,
    terminate_backends,
    wait_for,
)
from wa_trio.accounts.lease import Lease, take_lease
from wa_trio.config.settings import Settings
from wa_trio.core.lease_rules import FENCED_WITHIN, session_schema
from wa_trio.core.outcome import Found
from wa_trio.metrics import Metrics
from wa_trio.run import run_worker
from wa_trio.stores.ledger import AsyncLedger, Begin, Mark
from wa_trio.stores.postgres import (
    MIGRATIONS,
    LeaseConnection,
    LeaseLost,
    PgLedger,
    StoreError,
    apply_migrations,
    connect,
    lease_table,
    migrate,
)
from wa_trio.transport import OutgoingMessage, SendResult
from wa_trio.transport.dry_run import DryRunTransport
from wa_trio.worker.app import Worker


def _taken(store: str, account: str = "default") -> LeaseConnection:
    """The account's lease (a lease closed just before is freed by the server a moment
    after its connection ends: tried for up to 10 s)."""
    lease = LeaseConnection(store, account)
    deadline = time.monotonic() + 10
    while lease.try_take() is None:
        assert time.monotonic() < deadline, f"the lease of {account} stayed held"
        time.sleep(0.05)
    return lease


def _wait_released(store: str, account: str) -> None:
    deadline = time.monotonic() + 10
    while {row.account: row.held for row in lease_table(store)}.get(account):
        assert time.monotonic() < deadline, f"the lease of {account} stayed held"
        time.sleep(0.05)


async def _tracked(
    nursery: trio.Nursery, settings: Settings, transport: DryRunTransport | None = None
) -> tuple[Worker, list[Worker | None]]:
    """A worker in ``nursery`` and the list of its (re)starts (None: it stopped sending)."""
    workers: list[Worker | None] = []
    worker: Worker = await nursery.start(
        partial(
            run_worker,
            settings,
            transport=transport,
            handle_signals=False,
            on_running=workers.append,
        )
    )
    return worker, workers


def test_migrations_run_once_under_a_lock_when_replicas_start_together(pg_store: str) -> None:
    versions: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            versions.append(apply_migrations(pg_store))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert versions == [max(MIGRATIONS)] * 6


def test_a_process_migrates_a_store_once(pg_store: str) -> None:
    """Its accounts start together: the first migrates, the others do not connect again."""
    assert migrate(pg_store) == max(MIGRATIONS)
    database = pg_store.rsplit("/", 1)[1].split("?", 1)[0]
    pg_admin(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    try:
        assert migrate(pg_store) == max(MIGRATIONS)  # no connection: it could not have made one
        with pytest.raises(StoreError, match=r"cannot migrate|cannot connect"):
            apply_migrations(pg_store)  # what a new process would do
    finally:
        pg_admin(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")


def test_the_ledger_keeps_the_sqlite_ledgers_semantics(pg_store: str) -> None:
    migrate(pg_store)
    lease = _taken(pg_store)
    ledger = PgLedger(pg_store, "default", lease.epoch)
    try:
        assert ledger.begin("a", check=True, body_hash="h1") is None
        found = ledger.step([Mark("a", "sent", "WA1", "u", "h1")], [Begin("a", True, "h1")])
        assert found == [Found("sent", "h1")]  # the mark is visible to the same step's begin
        assert ledger.step([], [Begin("a", True, "h2")]) == [Found("sent", "h1")]  # conflict
        assert ledger.get("a").whatsapp_id == "WA1"  # type: ignore[union-attr]
        assert ledger.peek("a") == Found("sent", "h1")
        assert ledger.find_by_whatsapp_id("WA1") == ("a", "u")
        assert ledger.begin("b", check=True) is None  # left "sending": a crash
        assert ledger.peek("b") == Found("sending", None)
        assert ledger.begin("b", check=False) is None  # unchecked: first delivery without id
        assert ledger.count("sending") == 1
        other = PgLedger(pg_store, "other", 0)  # another account's rows are its own
        assert other.peek("a") is None
        other.close()
        assert ledger.prune(older_than=3600) == 0
        assert ledger.prune(older_than=-1) == 2
        assert ledger.get("a") is None
    finally:
        ledger.close()
        lease.close()


def test_a_fenced_holder_records_what_it_sent_but_cannot_begin_a_send(pg_store: str) -> None:
    migrate(pg_store)
    first = _taken(pg_store)
    old = PgLedger(pg_store, "default", first.epoch)
    old.begin("in-flight", check=True)  # the send the holder had in flight
    old.begin("sent-late", check=True)
    first.close()  # the holder's lease connection is gone (cut, or the holder died)
    second = _taken(pg_store)
    assert second.epoch == first.epoch + 1
    assert second.inherited_from is not None  # not released: the taker waits its grace
    new = PgLedger(pg_store, "default", second.epoch)
    try:
        assert new.inherited_sending() == 2
        with pytest.raises(LeaseLost):
            old.step([Mark("sent-late", "sent", "WA9")], [Begin("next", True)])
        assert new.peek("sent-late") == Found("sent", None)  # the truth kept
        assert new.peek("next") is None  # but no new send began under the old epoch
        assert new.inherited_sending() == 1  # exactly the ambiguous one
    finally:
        for closing in (old.close, new.close, second.close):
            closing()


def test_a_lease_is_held_by_one_connection_and_a_clean_release_says_so(pg_store: str) -> None:
    migrate(pg_store)
    first = _taken(pg_store, "acct-a")
    second = LeaseConnection(pg_store, "acct-a")
    third = LeaseConnection(pg_store, "acct-b")
    try:
        assert second.try_take() is None
        assert third.try_take() is not None  # another account's lease is its own
        table = {row.account: row for row in lease_table(pg_store)}
        assert table["acct-a"].held and table["acct-b"].held
        first.release()
        _wait_released(pg_store, "acct-a")
        assert second.try_take() == first.epoch + 1
        assert second.inherited_from is None  # released cleanly: no grace needed
        assert {row.account: row.held for row in lease_table(pg_store)} == {
            "acct-a": True,
            "acct-b": True,
        }
        second.close()  # the server ends the backend (and its locks) a moment after
        _wait_released(pg_store, "acct-a")
    finally:
        for lease in (first, second, third):
            lease.close()


def test_an_unreachable_store_is_one_line() -> None:
    with pytest.raises(StoreError) as caught:
        connect("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2", purpose="test")
    assert "\n" not in caught.value.message
    assert caught.value.message.startswith("cannot connect to WHATSAPP_STORE")


async def test_a_holder_whose_lease_connection_is_cut_fences_itself_in_time(
    pg_store: str, make_env: Callable[..., dict[str, str]]
) -> None:
    await trio.to_thread.run_sync(migrate, pg_store)
    settings = Settings.from_env(make_env(WHATSAPP_STORE=pg_store))
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    lease: Lease = await take_lease(settings, pg_store, metrics, serve_http=False)
    assert metrics.lease_epoch._value.get() == lease.epoch
    cut_at = 0.0
    lost: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lease.keep)
            await trio.sleep(0.3)
            assert await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio lease") == 1
            cut_at = trio.current_time()
    except* LeaseLost as group:
        lost.extend(group.exceptions)
    assert len(lost) == 1
    fenced_after = trio.current_time() - cut_at
    print(f"\nfenced {fenced_after:.2f} s after the lease connection was cut")
    assert fenced_after <= FENCED_WITHIN
    await lease.release(clean=False)


async def test_a_fenced_worker_stops_then_takes_its_lease_again_and_goes_on(
    pg_store: str, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    env = make_env(WHATSAPP_STORE=pg_store, WHATSAPP_RATE_LIMIT="100/s", WHATSAPP_RATE_BURST="1")
    settings = Settings.from_env(env)
    worker, workers = await _tracked(nursery, settings)
    try:
        ids = [f"job-{i}" for i in range(200)]
        await publish_many(settings, (job_body(i) for i in range(200)), message_ids=ids)
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) >= 20, what="20 sent")
        await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio lease")
        await wait_for(lambda: None in workers, what="the fence")
        await wait_for(lambda: isinstance(workers[-1], Worker), timeout=20, what="taken again")
        assert sample(worker, "wa_trio_leases_lost_total") == 1
        assert sample(worker, "wa_trio_lease_epoch") == 2
        await wait_for(
            lambda: {r["job_key"] for r in sent_records(settings.dry_run_file)} >= set(ids),
            timeout=60,
            what="every job sent",
        )
        keys = [r["job_key"] for r in sent_records(settings.dry_run_file)]
        assert len(keys) - len(set(keys)) <= 1  # at most the one send in flight at the fence
        rows = pg_query(pg_store, "SELECT epoch, count(*) FROM wa_trio_sends GROUP BY epoch")
        assert {epoch for epoch, _ in rows} == {1, 2}  # the ledger says which epoch sent what
    finally:
        worker.stop()
        try:
            await wait_for(lambda: workers[-1] is None, timeout=30, what="stopped")
        finally:
            await delete_topology(settings)


@pytest.mark.real_client
async def test_the_real_neonize_client_keeps_its_session_in_the_accounts_schema(
    pg_store: str, make_env: Callable[..., dict[str, str]]
) -> None:
    from wa_trio.log import Redactor
    from wa_trio.stores.postgres import ensure_session_schema
    from wa_trio.transport.neonize import NeonizeTransport

    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_STORE=pg_store, WHATSAPP_ACCOUNTS="x-1")
    )
    assert settings.session_database.startswith("postgres://")
    await trio.to_thread.run_sync(ensure_session_schema, pg_store, "x-1")
    transport = NeonizeTransport(settings, Redactor(True))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: transport.connect_attempts >= 1, timeout=30, what="a connect")

        def tables() -> set[str]:
            rows = pg_query(
                pg_store,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                session_schema("x-1"),
            )
            return {r[0] for r in rows}

        await wait_for(
            lambda: "whatsmeow_device" in tables(), timeout=30, what="whatsmeow's tables"
        )
        nursery.cancel_scope.cancel()
    assert {"whatsmeow_sessions", "whatsmeow_identity_keys", "whatsmeow_pre_keys"} <= tables()
    assert not (settings.session_path / "whatsapp.db").exists()  # nothing of it on disk
    # nothing of ours went to the server's default schema
    assert pg_query(
        pg_store,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name LIKE 'whatsmeow%%'",
    ) == [(0,)]


async def test_the_async_ledger_runs_the_pg_step_in_a_thread(pg_store: str) -> None:
    await trio.to_thread.run_sync(migrate, pg_store)
    lease = await trio.to_thread.run_sync(_taken, pg_store)
    ledger = AsyncLedger(await trio.to_thread.run_sync(PgLedger, pg_store, "default", lease.epoch))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        for i in range(20):
            await ledger.step([], [Begin(f"k{i}", True)])
        nursery.cancel_scope.cancel()
    assert ticks >= 20  # the loop ran while each step waited on the network
    assert await ledger.peek("k19") == Found("sending", None)
    await ledger.close()
    lease.close()


def _fake_linked_session(path: Path) -> None:
    """whatsmeow's own SQLite schema (made by whatsmeow) holding one device as pairing would
    leave it (random keys of the lengths whatsmeow checks), a peer's identity and a chat's
    settings (booleans: SQLite's 0/1 become PostgreSQL booleans and back)."""
    from wa_trio.cli.session_backup import _create_store

    _create_store(str(path))
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, "
            "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
            "adv_account_sig, adv_account_sig_key, adv_device_sig, push_name) VALUES "
            "(?, 7, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, 'wa-trio')",
            (
                "5511999990000.0:3@s.whatsapp.net",
                *(os.urandom(n) for n in (32, 32, 32, 64, 16, 40, 64, 32, 64)),
            ),
        )
        db.execute(
            "INSERT INTO whatsmeow_identity_keys VALUES (?, ?, ?)",
            ("5511999990000.0:3@s.whatsapp.net", "5511888880000:0", os.urandom(32)),
        )
        db.execute(
            "INSERT INTO whatsmeow_chat_settings (our_jid, chat_jid, muted_until, pinned, "
            "archived) VALUES (?, ?, 0, 1, 0)",
            ("5511999990000.0:3@s.whatsapp.net", "5511888880000@s.whatsapp.net"),
        )
    db.close()


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    from wa_trio.cli.session_backup import _read_sqlite

    return {table: sorted(rows) for table, (_, rows) in _read_sqlite(path).items() if rows}


@pytest.mark.real_client
def test_a_session_moves_from_sqlite_files_to_postgresql_and_back(
    pg_store: str, make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    from wa_trio.cli.session_backup import SessionError, export_account, import_account
    from wa_trio.stores.postgres.sessions import device_count

    files = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="sales"))
    store = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="sales", WHATSAPP_STORE=pg_store))
    files.session_path.mkdir(mode=0o700, parents=True)
    _fake_linked_session(files.session_db)
    exported = tmp_path / "sales.db"
    assert export_account(files, exported) > 10
    assert import_account(store, exported) > 10  # whatsmeow made its tables in the schema
    assert device_count(pg_store, "sales") == 1
    with pytest.raises(SessionError, match="already has a session"):
        import_account(store, exported)
    back = tmp_path / "back.db"
    export_account(store, back)
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    before, after = _rows(files.session_db), _rows(back)
    assert set(before) == {"whatsmeow_device", "whatsmeow_identity_keys", "whatsmeow_chat_settings"}
    assert after == before  # every row, every byte, the booleans as they were
    # a worker holding the account: an import is refused
    holder = LeaseConnection(pg_store, "sales")
    assert holder.try_take() is not None
    try:
        with pytest.raises(SessionError, match="running worker holds"):
            import_account(store, exported, force=True)
    finally:
        holder.close()
    _wait_released(pg_store, "sales")
    assert import_account(store, exported, force=True) > 10


async def test_a_replica_outlives_a_store_outage_and_goes_on(
    pg_store: str, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    """The store refuses every connection for a while (as when PostgreSQL restarts): the
    holder fences itself, keeps trying, takes its account back when the store returns and
    sends the rest; nothing is lost."""

    env = make_env(WHATSAPP_STORE=pg_store, WHATSAPP_RATE_LIMIT="100/s", WHATSAPP_RATE_BURST="1")
    settings = Settings.from_env(env)
    database = pg_store.rsplit("/", 1)[1].split("?", 1)[0]
    worker, workers = await _tracked(nursery, settings)
    try:
        ids = [f"job-{i}" for i in range(300)]
        await publish_many(settings, (job_body(i) for i in range(300)), message_ids=ids)
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) >= 20, what="20 sent")
        # the ledger's connection goes first: the next record of a send WhatsApp took fails
        # and is retried inside its shield; the fence must still cut it (it once hung here)
        await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio stores")
        await wait_for(
            lambda: worker.pipeline.statistics().ledger_problem is not None,
            what="the ledger failing",
        )
        await trio.to_thread.run_sync(
            pg_admin,
            f"ALTER DATABASE {database} ALLOW_CONNECTIONS false",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'",
        )
        await wait_for(lambda: None in workers, timeout=10, what="the fence")
        during = len(sent_records(settings.dry_run_file))
        await trio.sleep(3)  # the store stays away: nothing is sent, the worker keeps trying
        assert len(sent_records(settings.dry_run_file)) <= during + 1
        await trio.to_thread.run_sync(pg_admin, f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await wait_for(
            lambda: {r["job_key"] for r in sent_records(settings.dry_run_file)} >= set(ids),
            timeout=60,
            what="every job sent after the store came back",
        )
        assert sample(worker, "wa_trio_leases_lost_total") == 1
        keys = [r["job_key"] for r in sent_records(settings.dry_run_file)]
        assert len(keys) - len(set(keys)) <= 1  # at most the one send in flight at the fence
    finally:
        worker.stop()
        try:
            await wait_for(
                lambda: bool(workers) and workers[-1] is None, timeout=30, what="stopped"
            )
        finally:
            await delete_topology(settings)


def test_a_start_without_the_store_is_one_line(make_env: Callable[..., dict[str, str]]) -> None:
    env = make_env(WHATSAPP_STORE="postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    done = run_once(env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("wa-trio: cannot connect to WHATSAPP_STORE")


async def test_several_accounts_without_their_store_is_one_line_and_exit_2(
    make_env: Callable[..., dict[str, str]],
) -> None:
    """The store refusing at start reaches the CLI through the accounts' nurseries: one line
    (before, a multi-account process printed the exception group's traceback)."""
    from tests.conftest import closed_port

    store = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere?sslmode=disable"
    env = make_env(WHATSAPP_STORE=store, WHATSAPP_ACCOUNTS="a,b")
    done = await trio.to_thread.run_sync(run_once, env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("wa-trio: ")]
    assert lines[-1].startswith("wa-trio: cannot connect to WHATSAPP_STORE")


class _SlowDryRun(DryRunTransport):
    """Each send takes 0.3 s: whenever the test acts, a send is in flight."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        await trio.sleep(0.3)
        return await super().send(message)


async def test_the_fence_cuts_a_record_the_store_cannot_take(
    pg_store: str, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    """A send WhatsApp took is recorded inside a shield, retried while the ledger fails; when
    the ledger's connection died mid-send and then the lease is lost, the fence must still stop
    the worker at once (the record stays ``sending``: the taker's ambiguous window)."""
    from wa_trio.log import Redactor

    settings = Settings.from_env(make_env(WHATSAPP_STORE=pg_store))
    transport = _SlowDryRun(settings.dry_run_file, Redactor(True))
    worker, workers = await _tracked(nursery, settings, transport)
    try:
        await publish_many(
            settings, (job_body(i) for i in range(20)), message_ids=[f"slow-{i}" for i in range(20)]
        )
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) >= 1, what="a send")
        await trio.sleep(0.1)  # the next send is in flight now
        # the store pool cannot connect again (a pooled connection would take the record)
        database = pg_store.rsplit("/", 1)[1].split("?", 1)[0]
        await trio.to_thread.run_sync(
            pg_admin, f"ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        )
        try:
            await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio stores")
            await wait_for(
                lambda: worker.pipeline.statistics().ledger_problem is not None,
                what="the record failing",
            )
            cut_at = trio.current_time()
            await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio lease")
            await wait_for(lambda: None in workers, timeout=10, what="the fence")
            assert trio.current_time() - cut_at < 5
        finally:
            await trio.to_thread.run_sync(
                pg_admin, f"ALTER DATABASE {database} ALLOW_CONNECTIONS true"
            )
        rows = pg_query(pg_store, "SELECT count(*) FROM wa_trio_sends WHERE state = 'sending'")
        assert rows[0][0] >= 1  # the send it could not record: ambiguous for the taker
    finally:
        worker.stop()
        try:
            await wait_for(lambda: workers[-1] is None, timeout=30, what="stopped")
        finally:
            await delete_topology(settings)


def test_webhook_items_seen_are_shared_by_replicas_and_kept_per_account(pg_store: str) -> None:
    """The Cloud API's redelivery guard on PostgreSQL (stores/postgres/seen.py): what one
    replica recorded, the next holder of the account reads; other accounts are apart."""
    from wa_trio.stores.postgres.db import migrate
    from wa_trio.stores.postgres.seen import PgSeen

    migrate(pg_store)
    now = 1_800_000_000.0
    first, taker, other = PgSeen(pg_store, "shop"), PgSeen(pg_store, "shop"), PgSeen(pg_store, "x")
    try:
        first.add([("message:wamid.1", now - 10), ("status:wamid.2:read", now)])
        first.add([("message:wamid.1", now)])  # again: kept once
        assert taker.recent(now - 3600, 10) == ["status:wamid.2:read", "message:wamid.1"]
        assert other.recent(now - 3600, 10) == []
        assert taker.prune(now - 5) == 1 and taker.recent(0, 10) == ["status:wamid.2:read"]
    finally:
        for store in (first, taker, other):
            store.close()
