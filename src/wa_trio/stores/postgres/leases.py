"""An account's lease on its own connection: a session-level advisory lock (released by the
server the moment that connection ends, a holder killed -9 included) and the account's lease
epoch (``wa_trio_leases``), bumped by each taker: the fencing token every ledger write checks."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

import attrs
import eliot
import psycopg
from psycopg import sql

from wa_trio.core.lease_rules import LOCK_NAMESPACE, session_schema
from wa_trio.stores.postgres.db import LeaseLost, StoreError, connect, store_errors
from wa_trio.stores.postgres.pool import Pooled

#: seconds between two looks for whatsmeow tables without the fence (the holder's, beside its
#: pings: ``accounts.lease.Lease.keep``), the tables fenced at a look and how long each may
#: wait for its table's lock
FENCE_LOOK_EVERY = 15.0
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


#: accounts whose leases share one connection in a process of several (issue 34): a cut
#: connection fences those only, and 200 accounts need 8 connections, not 200
LEASES_PER_LINE = 25


class LeaseLine:
    """One connection holding the advisory locks of one or more accounts' leases; its
    statements one at a time (``lock``). ``broken`` once it failed: nobody joins it then."""

    def __init__(self, url: str, purpose: str) -> None:
        self.db = connect(url, purpose=purpose)
        self.lock = threading.Lock()
        self.users = 1

    @property
    def broken(self) -> bool:
        return self.db.closed or self.db.broken

    def beat(self, rows: list[tuple[str, int, str | None, str | None]]) -> set[str]:
        """The heartbeat of every lease held on this line, in one statement: (account, epoch,
        state, masked linked number) each; the accounts whose epoch is still theirs.

        Raises:
            StoreError: the connection is gone.
        """
        accounts, epochs, states, linked = (list(column) for column in zip(*rows, strict=True))
        with self.lock, store_errors("keep a lease"):
            kept = self.db.execute(
                "UPDATE wa_trio_leases l SET state = v.state, linked = v.linked, seen_at = now() "
                "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[]) "
                "AS v(account, epoch, state, linked) "
                "WHERE l.account = v.account AND l.epoch = v.epoch RETURNING l.account",
                (accounts, epochs, states, linked),
            ).fetchall()
        return {str(row[0]) for row in kept}

    def close(self) -> None:
        """Ends the connection (the server releases its locks at once); waits a bounded time
        for a statement in flight on it (its thread then owns it)."""
        got = self.lock.acquire(timeout=CLOSE_WAIT)
        try:
            with contextlib.suppress(psycopg.Error):
                self.db.close()
        finally:
            if got:
                self.lock.release()


#: seconds a close waits for a statement in flight on its line (libpq's keepalives end a
#: statement on a dead connection sooner)
CLOSE_WAIT = 10.0


class LeaseLines:
    """The lease lines of one process of several accounts: ``LEASES_PER_LINE`` accounts each,
    opened as accounts need them, closed when their last account leaves (thread-safe)."""

    def __init__(self, url: str, per_line: int = LEASES_PER_LINE) -> None:
        self.url = url
        self.per_line = per_line
        self._lines: list[LeaseLine] = []
        self._opened = 0
        self._guard = threading.Lock()

    def join(self) -> LeaseLine:
        """A line with room (a new one when none has).

        Raises:
            StoreError: a new line cannot connect.
        """
        with self._guard:
            for line in self._lines:
                if line.users < self.per_line and not line.broken:
                    line.users += 1
                    return line
            self._opened += 1
            line = LeaseLine(self.url, f"leases {self._opened}")
            self._lines.append(line)
            return line

    def leave(self, line: LeaseLine) -> None:
        with self._guard:
            line.users -= 1
            last = line.users <= 0
            if last and line in self._lines:
                self._lines.remove(line)
        if last:
            line.close()

    def count(self) -> int:
        """Lines open now (connections)."""
        with self._guard:
            return len(self._lines)


class LeaseConnection:
    """One account's lease: its advisory lock on a connection of its own (``lines`` None:
    a process of one account, whose standby queues for the lock at the server) or on a line
    it shares with other accounts of its process (then it only tries the lock), and the
    fence on its session's tables put through the process's store pool."""

    def __init__(self, url: str, account: str, lines: LeaseLines | None = None) -> None:
        self.account = account
        self._lines = lines
        self._line = lines.join() if lines is not None else LeaseLine(url, f"lease {account}")
        try:
            self._fencer = Pooled(url)
        except BaseException:
            self._leave()
            raise
        self._key: tuple[int, int] | None = None
        self._locked = False  # this connection holds the account's advisory lock
        self._closed = False
        self.epoch = 0
        self.inherited_from: str | None = None
        self.silent_for: float | None = None

    @property
    def line(self) -> LeaseLine:
        return self._line

    @property
    def _db(self) -> psycopg.Connection[Any]:
        return self._line.db

    def try_take(self, wait: float = 0.0) -> int | None:
        """The lease's new epoch, or None while another connection holds it (``wait``: queue
        for the lock up to that many seconds, on a connection of its own only: the server
        grants it the moment its holder's connection ends or releases it, so a hand-off
        needs no polling). Sets ``inherited_from``: the previous holder when it did not
        release the lease (it died, or was cut off), and ``silent_for``: seconds since that
        holder's last heartbeat, by the server's clock (``lease_rules.takeover_grace``)."""
        if self._lines is not None:
            wait = 0.0  # never block a shared line
        with self._line.lock, store_errors("take a lease"):
            if self._key is None:
                self._db.execute(
                    "INSERT INTO wa_trio_leases (account) VALUES (%s) ON CONFLICT DO NOTHING",
                    (self.account,),
                )
                row = self._db.execute(
                    "SELECT id FROM wa_trio_leases WHERE account = %s", (self.account,)
                ).fetchone()
                assert row is not None
                self._key = (LOCK_NAMESPACE, int(row[0]))
            if not self._lock(self._key, wait):
                return None
            self._locked = True
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

    def look_again(self) -> int:
        """A look for tables whatsmeow made since (a few, quickly): ``fence``."""
        return self.fence(most=FENCE_AT_A_LOOK, wait_ms=FENCE_WAIT_MS)

    def fence(self, *, most: int | None = None, wait_ms: int = 1000) -> int:
        """Put the fence (migration 8's ``wa_trio_fence``) on the tables of the account's
        session schema that lack it (``most`` at a time), each trigger waiting ``wait_ms`` at
        most for its table's lock (a table busy now is fenced at a later look): whatsmeow
        creates its tables at the first connect, so the holder looks again now and then
        (``look_again``). On the store pool, never the lease's line (a table's lock wait must not
        hold up the pings). The tables fenced now; never raises (the fence is belt and
        braces: a store that refuses it must not stop the account)."""
        schema = session_schema(self.account)
        done = 0
        try:
            with store_errors("fence a session"):
                bare = self._fencer.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON "
                    "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' AND NOT "
                    "EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND "
                    "t.tgname = 'wa_trio_fence')",
                    (schema,),
                ).fetchall()[:most]
                home = self._fencer.execute("SELECT current_schema()").fetchone()
                assert home is not None
                for (table,) in bare:
                    with contextlib.suppress(psycopg.errors.LockNotAvailable):
                        with self._fencer.transaction() as db:
                            db.execute(
                                "SELECT set_config('lock_timeout', %s, true)", (str(wait_ms),)
                            )
                            db.execute(_trigger(schema, table, home[0], self.account))
                        done += 1
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
        with self._line.lock, store_errors("keep a lease"):
            cursor = self._db.execute(
                "UPDATE wa_trio_leases SET state = %s, linked = %s, seen_at = now() "
                "WHERE account = %s AND epoch = %s",
                (state, linked, self.account, self.epoch),
            )
        if cursor.rowcount != 1:
            raise LeaseLost(f"the lease of account {self.account} moved past epoch {self.epoch}")

    def release(self) -> None:
        """A clean release (a graceful stop): says so, then lets the lock go."""
        if self._line.lock.acquire(timeout=CLOSE_WAIT):
            try:
                with contextlib.suppress(psycopg.Error):
                    self._db.execute(
                        "UPDATE wa_trio_leases SET holder = NULL WHERE account = %s AND epoch = %s",
                        (self.account, self.epoch),
                    )
            finally:
                self._line.lock.release()
        self.close()

    def close(self) -> None:
        """Lets the lock go: on a line of its own, by ending the connection (the server
        releases the lock at once); on a shared one, by unlocking it (a line that cannot
        unlock is closed: its other accounts' pings fail and fence them)."""
        if self._closed:
            return
        self._closed = True
        if self._lines is not None and self._key is not None and self._locked:
            unlocked = False
            if self._line.lock.acquire(timeout=CLOSE_WAIT):
                try:
                    with contextlib.suppress(psycopg.Error):
                        self._db.execute("SELECT pg_advisory_unlock(%s, %s)", self._key)
                        unlocked = True
                finally:
                    self._line.lock.release()
            if not unlocked:
                self._line.close()
        self._locked = False
        self._fencer.close()
        self._leave()

    def _leave(self) -> None:
        if self._lines is not None:
            self._lines.leave(self._line)
        else:
            self._line.close()


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
