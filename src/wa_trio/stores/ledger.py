"""The send ledger: what was sent, so that a redelivered job is not sent twice.

sqlite3 (stdlib) in WAL mode at WHATSAPP_SESSION_PATH/ledger.db, apart from the WhatsApp session.
One row a job key: ``sending`` is written (committed) before the send, ``sent`` with the WhatsApp
message id after WhatsApp accepted it, and only then is the job acked. ``failed`` marks a send
that WhatsApp refused (a retry may send it). Each row keeps the body's hash, so a message_id
reused for another body is caught (``outcome.decide``). The rules that read it are pure
(``outcome.decide``); the I/O here is blocking. ``AsyncLedger`` runs the per-job commit
(``step``) on the trio thread (a WAL commit without fsync; a thread hop would cost more than
the commit) and everything else (open, look-ups for receipts, prune, close) in a worker
thread, one call at a time.

``step`` is the one write: it commits the outcome of the send just done and the ``sending`` row
of the next job in one transaction, so a job costs one commit and the ambiguous window never
spans more than the one send in flight. That window: the process dies after WhatsApp accepted a
message and before its ``sent`` was committed. The row then says ``sending``; WHATSAPP_AMBIGUOUS
decides (resend: maybe a duplicate; skip: maybe a loss). docs/reliability.md also covers the
other window, a send WhatsApp did not answer in time.

A failing disk (full, read-only, gone) raises ``LedgerError``; the pipeline then holds the job,
reports it on /healthz and tries again: nothing is sent without its ``sending`` row.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import attrs
import trio

from wa_trio.core.errors import WaTrioError
from wa_trio.core.outcome import Found, begin_writes
from wa_trio.stores.files import open_private_db


class LedgerError(WaTrioError):
    """The ledger could not read or write (disk full, read-only, removed)."""

    code = "ledger_unavailable"


@attrs.frozen
class Entry:
    key: str
    state: str
    whatsapp_id: str | None
    updated_at: float


@attrs.frozen
class Begin:
    """Start a job: read its row (when ``check``) and write ``sending``, unless already sent."""

    key: str
    check: bool
    body_hash: str | None = None


@attrs.frozen
class Mark:
    """Record how a send ended (``sent`` with WhatsApp's id, or ``failed``)."""

    key: str
    state: str
    whatsapp_id: str | None = None
    user_id: str | None = None
    body_hash: str | None = None


_COLUMNS = "(key, state, whatsapp_id, updated_at, user_id, body_hash)"


class LedgerStore(Protocol):
    """What ``AsyncLedger`` needs of a blocking ledger: this SQLite one, or ``pg.PgLedger``."""

    #: whether ``step`` is cheap enough for the trio thread (a local commit; not a round trip)
    inline: bool

    def get(self, key: str) -> Entry | None: ...
    def peek(self, key: str) -> Found | None: ...
    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]: ...
    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None: ...
    def prune(self, older_than: float) -> int: ...
    def count(self, state: str) -> int: ...
    def close(self) -> None: ...


class Shortcuts:
    """One begin, one mark: a ``step`` of one (tests and the CLI)."""

    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        raise NotImplementedError

    def begin(self, key: str, *, check: bool, body_hash: str | None = None) -> Found | None:
        return self.step([], [Begin(key, check, body_hash)])[0]

    def mark(
        self, key: str, state: str, whatsapp_id: str | None = None, user_id: str | None = None
    ) -> None:
        self.step([Mark(key, state, whatsapp_id, user_id)], [])


class Ledger(Shortcuts):
    """Blocking ledger (call from a worker thread)."""

    inline = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = open_private_db(path)
            # NORMAL in WAL mode: a commit survives the process being killed (it is in the OS
            # page cache); only a power loss can lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sends (key TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "whatsapp_id TEXT, updated_at REAL NOT NULL, user_id TEXT, body_hash TEXT)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(sends)")}
            if "body_hash" not in columns:  # a ledger from before body hashes were kept
                self._db.execute("ALTER TABLE sends ADD COLUMN body_hash TEXT")
            if "deaths" not in columns:  # a ledger from before crash loops were counted
                self._db.execute("ALTER TABLE sends ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0")
            self._db.execute("CREATE INDEX IF NOT EXISTS sends_updated ON sends (updated_at)")
            self._db.execute("CREATE INDEX IF NOT EXISTS sends_wid ON sends (whatsapp_id)")
        except sqlite3.Error as error:
            raise LedgerError(f"cannot open the send ledger {path}: {error}") from None

    def get(self, key: str) -> Entry | None:
        with self._lock, _errors("read"):
            row = self._db.execute(
                "SELECT state, whatsapp_id, updated_at FROM sends WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Entry(key, row[0], row[1], row[2])

    def peek(self, key: str) -> Found | None:
        """The row of ``key`` as ``begin`` would find it, without writing."""
        with self._lock, _errors("read"):
            row = self._db.execute(
                "SELECT state, body_hash, deaths FROM sends WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Found(row[0], row[1], row[2])

    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        """Commit ``marks``, then ``begins``, in one transaction; the rows the begins found.

        A begin leaves a ``sent`` row as it is, and any row whose body hash differs (a conflict:
        the caller dead-letters the job and the first body's record stays).
        """
        now = time.time()
        found: list[Found | None] = []
        with self._lock, _errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO sends {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                    [(m.key, m.state, m.whatsapp_id, now, m.user_id, m.body_hash) for m in marks],
                )
                for begin in begins:
                    row = None
                    if begin.check:
                        row = self._db.execute(
                            "SELECT state, body_hash, deaths FROM sends WHERE key = ?",
                            (begin.key,),
                        ).fetchone()
                    state = None if row is None else Found(row[0], row[1], row[2])
                    deaths = begin_writes(state, begin.body_hash)
                    if deaths is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO sends (key, state, whatsapp_id, "
                            "updated_at, user_id, body_hash, deaths) "
                            "VALUES (?, 'sending', NULL, ?, NULL, ?, ?)",
                            (begin.key, now, begin.body_hash, deaths),
                        )
                    found.append(state)
                self._db.execute("COMMIT")
            except BaseException:
                # the real error matters, not a failed ROLLBACK (a full disk fails both)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        return found

    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        """(job key, user id) of the job WhatsApp knows as ``whatsapp_id`` (for receipts)."""
        with self._lock, _errors("read"):
            row = self._db.execute(
                "SELECT key, user_id FROM sends WHERE whatsapp_id = ?", (whatsapp_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def prune(self, older_than: float) -> int:
        with self._lock, _errors("write"):
            cursor = self._db.execute(
                "DELETE FROM sends WHERE updated_at < ?", (time.time() - older_than,)
            )
        return cursor.rowcount

    def count(self, state: str) -> int:
        with self._lock, _errors("read"):
            row = self._db.execute(
                "SELECT count(*) FROM sends WHERE state = ?", (state,)
            ).fetchone()
        return int(row[0])

    def limit_pages(self, pages: int) -> None:
        """Cap the database's size (``max_page_count``): how tests make the disk "full"."""
        with self._lock:
            self._db.execute(f"PRAGMA max_page_count={int(pages)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextlib.contextmanager
def _errors(doing: str) -> Iterator[None]:
    """sqlite3 errors -> LedgerError (one boundary for the ledger's disk)."""
    try:
        yield
    except sqlite3.Error as error:
        raise LedgerError(f"the send ledger cannot {doing}: {error}") from None


class AsyncLedger:
    """The ledger from trio: each call in a worker thread, one at a time."""

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> AsyncLedger:
        return cls(await trio.to_thread.run_sync(Ledger, path))

    async def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        """On the trio thread: a commit in WAL mode with ``synchronous=NORMAL`` is a write to
        the OS page cache (tens of microseconds, no fsync), far cheaper than the thread hop it
        would cost per job on the hot path (measured: docs/performance.md). Held by the same
        limiter, so it never interleaves with a call running in a worker thread. A ledger
        across the network (PostgreSQL) steps in a worker thread like every other call."""
        if not self.ledger.inline:
            return await trio.to_thread.run_sync(
                self.ledger.step, marks, begins, limiter=self._limiter
            )
        try:
            self._limiter.acquire_nowait()  # the common case: no scheduling pass
        except trio.WouldBlock:
            await self._limiter.acquire()
        try:
            return self.ledger.step(marks, begins)
        finally:
            self._limiter.release()

    async def peek(self, key: str) -> Found | None:
        return await trio.to_thread.run_sync(self.ledger.peek, key, limiter=self._limiter)

    async def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        return await trio.to_thread.run_sync(
            self.ledger.find_by_whatsapp_id, whatsapp_id, limiter=self._limiter
        )

    async def prune(self, older_than: float) -> int:
        return await trio.to_thread.run_sync(self.ledger.prune, older_than, limiter=self._limiter)

    async def get(self, key: str) -> Entry | None:
        return await trio.to_thread.run_sync(self.ledger.get, key, limiter=self._limiter)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.ledger.close, limiter=self._limiter)
