"""An account's lease on its own connection: a session-level advisory lock (released by the
server the moment that connection ends, a holder killed -9 included) and the account's lease
epoch (``wa_trio_leases``), bumped by each taker: the fencing token every ledger write checks."""

from __future__ import annotations

import contextlib
import os
import socket

import attrs
import eliot
import psycopg
from psycopg import sql

from wa_trio.core.lease_rules import LOCK_NAMESPACE, session_schema
from wa_trio.stores.postgres.db import LeaseLost, StoreError, connect, store_errors

#: pings between two looks for whatsmeow tables without the fence (15 s), the tables fenced
#: at a look and how long each may wait for its table's lock: at most 0.4 s inside a ping,
#: well under ``lease_rules.FENCE_AFTER``
FENCE_LOOK_EVERY = 60
FENCE_AT_A_LOOK = 4
FENCE_WAIT_MS = 100


def _trigger(schema: str, table: str, home: str, account: str) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER wa_trio_fence BEFORE INSERT OR UPDATE OR DELETE ON {} "
        "FOR EACH ROW EXECUTE FUNCTION {}({})"
    ).format(
        sql.Identifier(schema, table), sql.Identifier(home, "wa_trio_fence"), sql.Literal(account)
    )


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
        self.silent_for: float | None = None
        self._pings = 0

    def try_take(self, wait: float = 0.0) -> int | None:
        """The lease's new epoch, or None while another connection holds it (``wait``: queue
        for the lock up to that many seconds: the server grants it the moment its holder's
        connection ends or releases it, so a hand-off needs no polling). Sets
        ``inherited_from``: the previous holder when it did not release the lease (it died,
        or was cut off), and ``silent_for``: seconds since that holder's last heartbeat, by
        the server's clock (``lease_rules.takeover_grace``)."""
        with store_errors("take a lease"):
            self._db.execute(
                "INSERT INTO wa_trio_leases (account) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.account,),
            )
            row = self._db.execute(
                "SELECT id FROM wa_trio_leases WHERE account = %s", (self.account,)
            ).fetchone()
            assert row is not None
            if not self._lock((LOCK_NAMESPACE, int(row[0])), wait):
                return None
            before = self._db.execute(
                "SELECT holder, extract(epoch FROM now() - coalesce(seen_at, taken_at))::float8 "
                "FROM wa_trio_leases WHERE account = %s",
                (self.account,),
            ).fetchone()
            bumped = self._db.execute(
                "UPDATE wa_trio_leases SET epoch = epoch + 1, holder = %s, taken_at = now() "
                "WHERE account = %s RETURNING epoch",
                (holder_name(), self.account),
            ).fetchone()
            assert before is not None and bumped is not None
            self.inherited_from, self.silent_for = before[0], before[1]
            self.epoch = int(bumped[0])
            self.fence()
            return self.epoch

    def fence(self, *, most: int | None = None, wait_ms: int = 1000) -> int:
        """Put the fence (migration 8's ``wa_trio_fence``) on the tables of the account's
        session schema that lack it (``most`` at a time), each trigger waiting ``wait_ms`` at
        most for its table's lock (a table busy now is fenced at a later look): whatsmeow
        creates its tables at the first connect, so the holder looks again now and then
        (``ping``). The tables fenced now; never raises (the fence is belt and braces: a store
        that refuses it must not stop the account)."""
        schema = session_schema(self.account)
        done = 0
        try:
            with store_errors("fence a session"):
                bare = self._db.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON "
                    "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' AND NOT "
                    "EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND "
                    "t.tgname = 'wa_trio_fence')",
                    (schema,),
                ).fetchall()[:most]
                home = self._db.execute("SELECT current_schema()").fetchone()
                assert home is not None
                self._db.execute("SELECT set_config('lock_timeout', %s, false)", (str(wait_ms),))
                try:
                    for (table,) in bare:
                        with contextlib.suppress(psycopg.errors.LockNotAvailable):
                            self._db.execute(_trigger(schema, table, home[0], self.account))
                            done += 1
                finally:
                    self._db.execute("SELECT set_config('lock_timeout', '0', false)")
        except StoreError as error:
            eliot.log_message(
                message_type="wa_trio:lease:fence_failed", account=self.account,
                error=error.message,
            )  # fmt: skip
        return done

    def _lock(self, lock: tuple[int, int], wait: float) -> bool:
        if wait <= 0:
            got = self._db.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
            return bool(got and got[0])
        self._db.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait * 1000)}",))
        try:
            self._db.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            self._db.execute("SELECT set_config('lock_timeout', '0', false)")
        return True

    def ping(self, state: str | None = None, linked: str | None = None) -> None:
        """The holder's heartbeat: a round trip on the lease's connection that records the
        account's state and (masked) linked number for ``wa-trio accounts``.

        Raises:
            StoreError: the connection is gone.
            LeaseLost: the account's epoch is no longer ours.
        """
        self._pings += 1
        if self._pings % FENCE_LOOK_EVERY == 0:  # tables whatsmeow made since: a few, quickly
            self.fence(most=FENCE_AT_A_LOOK, wait_ms=FENCE_WAIT_MS)
        with store_errors("keep a lease"):
            cursor = self._db.execute(
                "UPDATE wa_trio_leases SET state = %s, linked = %s, seen_at = now() "
                "WHERE account = %s AND epoch = %s",
                (state, linked, self.account, self.epoch),
            )
        if cursor.rowcount != 1:
            raise LeaseLost(f"the lease of account {self.account} moved past epoch {self.epoch}")

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


@attrs.frozen
class LeaseRow:
    """An account as the store knows it (``wa-trio accounts``)."""

    account: str
    epoch: int
    holder: str | None  # host:pid of the holder, or of the last one when it did not release
    held: bool  # a connection holds the lock now
    state: str | None  # the holder's last heartbeat
    linked: str | None  # masked in production
    seen_at: float | None  # seconds since the epoch


def lease_table(url: str) -> list[LeaseRow]:
    """Every account the store knows, by name."""
    with (
        contextlib.closing(connect(url, purpose="accounts")) as db,
        store_errors("read the leases"),
    ):
        rows = db.execute(
            "SELECT l.account, l.epoch, l.holder, EXISTS (SELECT 1 FROM pg_locks p WHERE "
            "p.locktype = 'advisory' AND p.classid = %s AND p.objid = l.id AND p.granted), "
            "l.state, l.linked, extract(epoch FROM l.seen_at)::float8 "
            "FROM wa_trio_leases l ORDER BY l.account",
            (LOCK_NAMESPACE,),
        ).fetchall()
    return [LeaseRow(str(r[0]), int(r[1]), r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]
