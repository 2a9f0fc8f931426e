"""neonize's real client on a PostgreSQL session store (issue 27, item 4), offline: every
connect dials a closed loopback port, so nothing leaves the machine, but whatsmeow opens its
store first, as it does in production.

Pinned upstream behaviour (goneonize/main.go ``getDB``: ``sqlstore.New(..., "postgres", url)``
at every connect, never closed; whatsmeow's driver is lib/pq, whose ``sslmode`` defaults to
``require`` and knows neither ``prefer`` nor ``allow``):
- each connect holds one more server backend for the life of the process;
- a store URL without ``sslmode`` never reaches a server without TLS.
What we do about it: ``stores.postgres.db.session_url`` pins the ``sslmode`` psycopg
negotiated and has the server end idle session connections (``idle_session_timeout``: a left
pool's backend goes, and lib/pq reconnects a used one, shown with a linked device's store);
on a server without that setting the process's connects are bounded
(``transport/neonize/store_connects.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import closed_port
from wa_trio.core.lease_rules import (
    IDLE_SINCE_SERVER,
    SESSION_IDLE_MS,
    session_schema,
    session_store_url,
)
from wa_trio.stores.postgres import ensure_session_schema, migrate
from wa_trio.stores.postgres.db import connect_budget, session_url
from wa_trio.transport.neonize.library import create_session_store


def _backends(url: str) -> int:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        row: Any = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0])


def _has_whatsmeow_tables(url: str) -> bool:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        row: Any = db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = 'whatsmeow_device'",
            (session_schema("default"),),
        ).fetchone()
    return int(row[0]) == 1


def _tls(url: str) -> bool:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        return bool(db.pgconn.ssl_in_use)


@pytest.fixture
def store(pg_store: str) -> str:
    """The test's database, its URL without ``sslmode`` (as many users write it)."""
    migrate(pg_store)
    ensure_session_schema(pg_store, "default")
    return pg_store.split("?")[0]


def test_without_an_sslmode_whatsmeow_never_reaches_a_server_without_tls(store: str) -> None:
    if _tls(store):  # pragma: no cover - the machine's server has TLS off
        pytest.fail("this test needs the local PostgreSQL without TLS (ssl = off)")
    proxy = f"http://127.0.0.1:{closed_port()}"
    create_session_store(session_store_url(store, "default"), proxy)  # lib/pq: require
    assert not _has_whatsmeow_tables(store)
    pinned = session_url(store, "default")
    assert "sslmode=disable" in pinned and "search_path=" in pinned
    create_session_store(pinned, proxy)
    assert _has_whatsmeow_tables(store)


def test_an_sslmode_both_drivers_know_is_kept(store: str) -> None:
    pinned = session_url(store + "?sslmode=disable", "default")
    assert pinned.count("sslmode=") == 1 and "sslmode=disable" in pinned
    prefer = session_url(store + "?sslmode=prefer", "default")
    assert "sslmode=prefer" not in prefer and "sslmode=disable" in prefer


def test_each_connect_holds_one_more_backend_until_the_process_ends(store: str) -> None:
    pinned = session_store_url(store + "?sslmode=disable", "default")  # no idle timeout
    proxy = f"http://127.0.0.1:{closed_port()}"
    before = _backends(store)
    for _ in range(3):
        create_session_store(pinned, proxy)
    assert _backends(store) - before == 3


def test_the_budget_is_unbounded_on_a_server_that_ends_idle_sessions(store: str) -> None:
    with contextlib.closing(psycopg.connect(store, autocommit=True)) as db:
        version = db.pgconn.server_version
    assert version >= IDLE_SINCE_SERVER  # the machine's PostgreSQL 15
    assert connect_budget(store, 1) is None
    assert f"idle_session_timeout={SESSION_IDLE_MS}" in session_url(store, "default")


def test_the_budget_on_an_older_server_is_a_quarter_of_it_and_one_connect_per_account(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wa_trio.stores.postgres.db as db_module

    monkeypatch.setattr(db_module, "IDLE_SINCE_SERVER", 10**7)  # as on PostgreSQL 13
    with contextlib.closing(psycopg.connect(store, autocommit=True)) as db:
        row: Any = db.execute("SHOW max_connections").fetchone()
    limit = int(row[0])
    assert connect_budget(store, 1) == max(2, limit // 4)
    assert connect_budget(store, limit) == limit + 1
    assert "idle_session_timeout" not in session_url(store, "default")


def _link_a_device(url: str, account: str) -> None:
    """A device row as pairing leaves it (random keys of the lengths whatsmeow checks), in
    the whatsmeow tables whatsmeow made: its client then loads the device's stores."""
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        db.execute(
            f"INSERT INTO {session_schema(account)}.whatsmeow_device (jid, registration_id, "
            "noise_key, identity_key, signed_pre_key, signed_pre_key_id, signed_pre_key_sig, "
            "adv_key, adv_details, adv_account_sig, adv_account_sig_key, adv_device_sig, "
            "push_name) VALUES (%s, 7, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s, 'wa-trio')",
            (
                "5511999990000.0:3@s.whatsapp.net",
                *(os.urandom(n) for n in (32, 32, 32, 64, 16, 40, 64, 32, 64)),
            ),
        )


def _wait_backends(url: str, count: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while (now := _backends(url)) != count and time.monotonic() < deadline:
        time.sleep(0.2)
    return now


def test_the_server_ends_idle_session_connections_and_whatsmeow_reconnects(store: str) -> None:
    """Issue 34: the session store counted in the connection budget. With the idle timeout in
    the session URL, the backend a connect left (whatsmeow's pool, never closed) ends once
    idle, and a linked device's store, read again after its connection ended, works on a new
    one (lib/pq: the server's FATAL is ``driver.ErrBadConn``; database/sql retries)."""
    from wa_trio.transport.neonize.library import new_client, proxy_settings

    proxy = f"http://127.0.0.1:{closed_port()}"
    pinned = session_url(store, "default")
    before = _backends(store)
    create_session_store(pinned, proxy)  # whatsmeow's tables
    assert _wait_backends(store, before) == before  # its pool's backend went when idle
    _link_a_device(store, "default")
    client = new_client(pinned)
    with contextlib.suppress(Exception):  # the dial fails by design; the store is open
        client.connect(proxy_settings(proxy))
    try:
        for _ in range(2):
            assert len(client.contact.get_all_contacts()) == 0  # a read of the device's store
            assert _backends(store) == before + 1
            assert _wait_backends(store, before) == before  # idle: the server ended it
    finally:
        with contextlib.suppress(Exception):
            client.stop()


def _count(url: str, statement: str, *params: Any) -> int:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        row: Any = db.execute(statement, params).fetchone()
    return int(row[0])


def test_a_fenced_holders_neonize_cannot_write_the_session_the_taker_uses(store: str) -> None:
    """Issue 34: the fence reaches whatsmeow's tables. neonize's real client (lib/pq) opens
    the session with the holder's lease epoch in its URL (``wa_trio.epoch``); migration 8's
    trigger, put by the holder on each table of the session schema, refuses a write from a
    connection whose epoch is over. Shown with whatsmeow's own first write, its schema upgrade
    in a fresh account's schema: from the replica that lost the lease (epoch 1) it is refused
    and rolled back; from the taker (epoch 2) it goes through."""
    from wa_trio.stores.postgres.db import session_url
    from wa_trio.stores.postgres.leases import LeaseConnection

    ensure_session_schema(store, "shop")
    schema = session_schema("shop")
    with contextlib.closing(psycopg.connect(store, autocommit=True)) as db:  # whatsmeow's layout
        db.execute(f"CREATE TABLE {schema}.whatsmeow_version (version INTEGER, compat INTEGER)")
    first = LeaseConnection(store, "shop")
    assert first.try_take() == 1  # taking it fences the tables there
    first.close()  # the holder is cut off; another replica takes the account
    taker = LeaseConnection(store, "shop")
    try:
        assert taker.try_take() == 2
        proxy = f"http://127.0.0.1:{closed_port()}"
        tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s"
        create_session_store(session_url(store, "shop", epoch=1), proxy)  # the stale holder
        assert _count(store, tables, schema) == 1  # refused: whatsmeow's upgrade rolled back
        assert _count(store, f"SELECT count(*) FROM {schema}.whatsmeow_version") == 0
        create_session_store(session_url(store, "shop", epoch=2), proxy)  # the holder
        assert _count(store, tables, schema) > 10
        assert _count(store, f"SELECT count(*) FROM {schema}.whatsmeow_version") == 1
        assert taker.fence() > 10  # whatsmeow's new tables, fenced at the holder's next look
        assert taker.fence() == 0
        # a connection without an epoch (wa-trio session import, an operator) is not fenced
        with contextlib.closing(psycopg.connect(store, autocommit=True)) as db:
            db.execute(f"UPDATE {schema}.whatsmeow_version SET compat = compat")
        stale = f"{store}?options=-c%20wa_trio.epoch%3D1"
        refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match="lease epoch 1")
        with contextlib.closing(psycopg.connect(stale, autocommit=True)) as db, refused:
            db.execute(f"UPDATE {schema}.whatsmeow_version SET compat = compat")
    finally:
        taker.close()
