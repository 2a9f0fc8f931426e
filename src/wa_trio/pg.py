"""PostgreSQL, the store for replicas (WHATSAPP_STORE=postgresql://...): **the only psycopg
importer**. Blocking (psycopg 3, sync): call it from a worker thread.

- ``migrate``: our tables, versioned (``wa_trio_schema``), applied at start-up under a
  transaction-level advisory lock, so replicas starting together apply each version once.
- ``LeaseConnection``: one account's lease, a session-level advisory lock held on a dedicated
  connection (released by the server the moment that connection ends: a holder killed -9
  included). Taking it bumps the account's lease epoch (``wa_trio_leases``), the fencing token
  every ledger write checks.
- ``PgLedger``: the send ledger (the same calls as ``ledger.Ledger``) in ``wa_trio_sends``, a
  row per (account, job key) with the epoch that wrote it. A ``step`` whose epoch is no longer
  the account's current one commits its marks (what was really sent stays known) and refuses
  its begins (``LeaseLost``): a fenced holder cannot start a send.
- ``ensure_session_schema``: the schema whatsmeow keeps the account's WhatsApp session in
  (neonize opens ``config.session_store_url``, whose ``search_path`` names it).

Connections use TCP keepalives on both ends (``KEEPALIVE``): a holder cut off from the server
loses its lock once the server has missed its probes (``lease_rules.SERVER_DROPS_AFTER``),
later than the holder fences itself (``lease_rules``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from wa_trio.errors import WaTrioError
from wa_trio.lease_rules import (
    LOCK_NAMESPACE,
    SERVER_KEEPALIVE_COUNT,
    SERVER_KEEPALIVE_IDLE,
    SERVER_KEEPALIVE_INTERVAL,
    session_schema,
)
from wa_trio.ledger import Begin, Entry, LedgerError, Mark, Shortcuts
from wa_trio.outcome import Found

#: libpq's keepalives (the client notices a dead server) and the server's (it notices a dead
#: client and drops its advisory locks); ``options`` sets the server's for this session
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": SERVER_KEEPALIVE_IDLE,
    "keepalives_interval": SERVER_KEEPALIVE_INTERVAL,
    "keepalives_count": SERVER_KEEPALIVE_COUNT,
    "options": (
        f"-c tcp_keepalives_idle={SERVER_KEEPALIVE_IDLE} "
        f"-c tcp_keepalives_interval={SERVER_KEEPALIVE_INTERVAL} "
        f"-c tcp_keepalives_count={SERVER_KEEPALIVE_COUNT}"
    ),
}


class StoreError(WaTrioError):
    """PostgreSQL could not be reached or refused a statement."""

    code = "store_unavailable"


class LeaseLost(LedgerError):
    """This process's lease epoch is no longer the account's: another replica took it over."""

    code = "lease_lost"


def connect(url: str, *, purpose: str) -> psycopg.Connection[Any]:
    """An autocommit connection (``application_name`` says what it is for)."""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=5,
            application_name=f"wa-trio {purpose}"[:63],
            **KEEPALIVE,
        )
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to WHATSAPP_STORE: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ------------------------------------------------------------------------------- migrations

#: version -> statements; append only (a released version never changes)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE wa_trio_leases (account TEXT PRIMARY KEY, id SERIAL UNIQUE, "
        "epoch BIGINT NOT NULL DEFAULT 0, holder TEXT, taken_at TIMESTAMPTZ)",
        "CREATE TABLE wa_trio_sends (account TEXT NOT NULL, key TEXT NOT NULL, "
        "state TEXT NOT NULL, whatsapp_id TEXT, updated_at DOUBLE PRECISION NOT NULL, "
        "user_id TEXT, body_hash TEXT, epoch BIGINT NOT NULL, PRIMARY KEY (account, key))",
        "CREATE INDEX wa_trio_sends_updated ON wa_trio_sends (updated_at)",
        "CREATE INDEX wa_trio_sends_wid ON wa_trio_sends (account, whatsapp_id)",
        "CREATE INDEX wa_trio_sends_sending ON wa_trio_sends (account, epoch) "
        "WHERE state = 'sending'",
    ),
}
_MIGRATION_LOCK = (LOCK_NAMESPACE, 0)  # the accounts' leases use ids from 1


def migrate(url: str) -> int:
    """Apply the versions this database lacks, under an advisory lock (replicas starting at
    once wait for each other); the schema version now."""
    with contextlib.closing(connect(url, purpose="migrate")) as db, _errors("migrate"):
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
            db.execute("CREATE TABLE IF NOT EXISTS wa_trio_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM wa_trio_schema").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO wa_trio_schema (version) VALUES (%s)", (version,))
                current = version
        return current


def ensure_session_schema(url: str, account: str) -> None:
    """The schema whatsmeow creates its tables in for ``account`` (it cannot create it)."""
    schema = session_schema(account)
    with contextlib.closing(connect(url, purpose="session schema")) as db, _errors("migrate"):
        db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


@contextlib.contextmanager
def _errors(doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as error:
        raise StoreError(f"WHATSAPP_STORE cannot {doing}: {_one_line(error)}") from None


# ------------------------------------------------------------------------------------ leases


def holder_name() -> str:
    """Who holds a lease, as ``wa-trio accounts`` shows it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseConnection:
    """One account's lease on its own connection (kept for as long as the lease is held)."""

    def __init__(self, url: str, account: str) -> None:
        self.account = account
        self._db = connect(url, purpose=f"lease {account}")
        self.epoch = 0
        self.inherited_from: str | None = None

    def try_take(self) -> int | None:
        """The lease's new epoch, or None while another connection holds it. Sets
        ``inherited_from``: the previous holder when it did not release the lease (it died,
        or was cut off: the taker waits ``lease_rules.TAKEOVER_GRACE`` before sending)."""
        with _errors("take a lease"):
            self._db.execute(
                "INSERT INTO wa_trio_leases (account) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.account,),
            )
            row = self._db.execute(
                "SELECT id, holder FROM wa_trio_leases WHERE account = %s", (self.account,)
            ).fetchone()
            assert row is not None
            lock = (LOCK_NAMESPACE, int(row[0]))
            got = self._db.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
            if not (got and got[0]):
                return None
            bumped = self._db.execute(
                "UPDATE wa_trio_leases SET epoch = epoch + 1, holder = %s, taken_at = now() "
                "WHERE account = %s RETURNING epoch",
                (holder_name(), self.account),
            ).fetchone()
            assert bumped is not None
            self.inherited_from = row[1]
            self.epoch = int(bumped[0])
            return self.epoch

    def ping(self) -> None:
        """A round trip on the lease's connection (raises StoreError when it is gone)."""
        with _errors("keep a lease"):
            self._db.execute("SELECT 1")

    def release(self) -> None:
        """A clean release (a graceful stop): says so, then ends the connection."""
        with contextlib.suppress(psycopg.Error):
            self._db.execute(
                "UPDATE wa_trio_leases SET holder = NULL WHERE account = %s AND epoch = %s",
                (self.account, self.epoch),
            )
        self.close()

    def close(self) -> None:
        """Ends the connection: the server releases the lock at once."""
        with contextlib.suppress(psycopg.Error):
            self._db.close()


def lease_table(url: str) -> list[tuple[str, int, str | None, bool]]:
    """(account, epoch, last holder, held now) of every account the store knows."""
    with contextlib.closing(connect(url, purpose="accounts")) as db, _errors("read the leases"):
        rows = db.execute(
            "SELECT l.account, l.epoch, l.holder, EXISTS (SELECT 1 FROM pg_locks p WHERE "
            "p.locktype = 'advisory' AND p.classid = %s AND p.objid = l.id AND p.granted) "
            "FROM wa_trio_leases l ORDER BY l.account",
            (LOCK_NAMESPACE,),
        ).fetchall()
    return [(str(a), int(e), h, bool(held)) for a, e, h, held in rows]


# ------------------------------------------------------------------------------------ ledger

_UPSERT = (
    "INSERT INTO wa_trio_sends (account, key, state, whatsapp_id, updated_at, user_id, "
    "body_hash, epoch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account, key) DO "
    "UPDATE SET state = EXCLUDED.state, whatsapp_id = EXCLUDED.whatsapp_id, updated_at = "
    "EXCLUDED.updated_at, user_id = EXCLUDED.user_id, body_hash = EXCLUDED.body_hash, "
    "epoch = EXCLUDED.epoch"
)


class PgLedger(Shortcuts):
    """The send ledger of one account in PostgreSQL (blocking; ``ledger.Ledger``'s calls)."""

    inline = False  # a network round trip: AsyncLedger runs every call in a worker thread

    def __init__(self, url: str, account: str, epoch: int) -> None:
        self.account = account
        self.epoch = epoch
        self._lock = threading.Lock()
        try:
            self._db = connect(url, purpose=f"ledger {account}")
        except StoreError as error:
            raise LedgerError(error.message) from None

    def get(self, key: str) -> Entry | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT state, whatsapp_id, updated_at FROM wa_trio_sends "
                "WHERE account = %s AND key = %s",
                (self.account, key),
            ).fetchone()
        return None if row is None else Entry(key, row[0], row[1], row[2])

    def peek(self, key: str) -> Found | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT state, body_hash FROM wa_trio_sends WHERE account = %s AND key = %s",
                (self.account, key),
            ).fetchone()
        return None if row is None else Found(row[0], row[1])

    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        """``ledger.Ledger.step``, fenced: begins are written only while this process's epoch
        is the account's (checked under a row lock in the same transaction)."""
        now = time.time()
        found: list[Found | None] = []
        lost = False
        with self._lock, _ledger_errors("write"), self._db.transaction():
            row = self._db.execute(
                "SELECT epoch FROM wa_trio_leases WHERE account = %s FOR SHARE", (self.account,)
            ).fetchone()
            lost = row is None or int(row[0]) != self.epoch
            if marks:
                self._db.cursor().executemany(
                    _UPSERT,
                    [
                        (
                            self.account,
                            m.key,
                            m.state,
                            m.whatsapp_id,
                            now,
                            m.user_id,
                            m.body_hash,
                            self.epoch,
                        )
                        for m in marks
                    ],
                )
            if not lost:
                for begin in begins:
                    found.append(self._begin(begin, now))
        if lost and begins:
            raise LeaseLost(
                f"the lease of account {self.account} moved past epoch {self.epoch}: another "
                "replica holds it"
            )
        return found

    def _begin(self, begin: Begin, now: float) -> Found | None:
        row = None
        if begin.check:
            row = self._db.execute(
                "SELECT state, body_hash FROM wa_trio_sends WHERE account = %s AND key = %s "
                "FOR UPDATE",
                (self.account, begin.key),
            ).fetchone()
        state = None if row is None else Found(row[0], row[1])
        differs = bool(state and state.body_hash and begin.body_hash != state.body_hash)
        if (state is None or state.state != "sent") and not differs:
            self._db.execute(
                _UPSERT,
                (self.account, begin.key, "sending", None, now, None, begin.body_hash, self.epoch),
            )
        return state

    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT key, user_id FROM wa_trio_sends WHERE account = %s AND whatsapp_id = %s",
                (self.account, whatsapp_id),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def prune(self, older_than: float) -> int:
        with self._lock, _ledger_errors("write"):
            cursor = self._db.execute(
                "DELETE FROM wa_trio_sends WHERE account = %s AND updated_at < %s",
                (self.account, time.time() - older_than),
            )
        return cursor.rowcount

    def count(self, state: str) -> int:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT count(*) FROM wa_trio_sends WHERE account = %s AND state = %s",
                (self.account, state),
            ).fetchone()
        return int(row[0]) if row else 0

    def inherited_sending(self) -> int:
        """``sending`` rows written under an earlier epoch: the jobs a dead holder may have
        sent (its ambiguous window), which WHATSAPP_AMBIGUOUS decides when they come back."""
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT count(*) FROM wa_trio_sends WHERE account = %s AND state = 'sending' "
                "AND epoch < %s",
                (self.account, self.epoch),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()


@contextlib.contextmanager
def _ledger_errors(doing: str) -> Iterator[None]:
    """psycopg errors -> LedgerError: the pipeline holds the job and retries (health red)."""
    try:
        yield
    except psycopg.Error as error:
        raise LedgerError(
            f"the send ledger (PostgreSQL) cannot {doing}: {_one_line(error)}"
        ) from None


__all__ = [
    "LeaseConnection",
    "LeaseLost",
    "PgLedger",
    "StoreError",
    "connect",
    "ensure_session_schema",
    "lease_table",
    "migrate",
]
