"""The send ledger: what was sent, so that a redelivered job is not sent twice.

sqlite3 (stdlib) in WAL mode at WHATSAPP_SESSION_PATH/ledger.db, apart from the WhatsApp session.
One row a job key: ``sending`` is written (committed) before the send, ``sent`` with the WhatsApp
message id after WhatsApp accepted it, and only then is the job acked. ``failed`` marks a send
that WhatsApp refused (a retry may send it). The rules that read it are pure (``decide``); the
I/O here is blocking and is called through ``trio.to_thread`` by ``AsyncLedger``, one thread at
a time, so the trio loop never waits on the disk.

The ambiguous window of the ledger: the process dies after WhatsApp accepted a message and before
``sent`` was committed. The row then says ``sending``; WHATSAPP_AMBIGUOUS decides (resend:
maybe a duplicate; skip: maybe a loss). docs/reliability.md also covers the other window, a
send WhatsApp did not answer in time.
"""

from __future__ import annotations

import enum
import threading
import time
from pathlib import Path

import attrs
import trio

from wa_trio.db import open_private_db


class Decision(enum.Enum):
    SEND = "send"
    DUPLICATE = "duplicate"  # already sent: ack without sending
    AMBIGUOUS_RESEND = "ambiguous_resend"
    AMBIGUOUS_SKIP = "ambiguous_skip"


def decide(state: str | None, *, ambiguous: str) -> Decision:
    """What to do with a job whose ledger row is in ``state`` (None: no row)."""
    if state == "sent":
        return Decision.DUPLICATE
    if state == "sending":
        return Decision.AMBIGUOUS_SKIP if ambiguous == "skip" else Decision.AMBIGUOUS_RESEND
    return Decision.SEND


@attrs.frozen
class Entry:
    key: str
    state: str
    whatsapp_id: str | None
    updated_at: float


class Ledger:
    """Blocking ledger (call from a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_private_db(path)
        # NORMAL in WAL mode: a commit survives the process being killed (it is in the OS page
        # cache); only a power loss can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sends (key TEXT PRIMARY KEY, state TEXT NOT NULL, "
            "whatsapp_id TEXT, updated_at REAL NOT NULL, user_id TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS sends_updated ON sends (updated_at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS sends_wid ON sends (whatsapp_id)")

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, whatsapp_id, updated_at FROM sends WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Entry(key, row[0], row[1], row[2])

    def begin(self, key: str, *, check: bool) -> str | None:
        """Read the current state (when ``check``) and mark ``sending``, in one transaction.

        Returns the state found (None when absent or not checked); the row is not changed when
        the state found is ``sent``.
        """
        return self.begin_many([(key, check)])[0]

    def begin_many(self, requests: list[tuple[str, bool]]) -> list[str | None]:
        """``begin`` for several jobs (key, check) in one transaction."""
        now = time.time()
        found: list[str | None] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, check in requests:
                    state = None
                    if check:
                        row = self._db.execute(
                            "SELECT state FROM sends WHERE key = ?", (key,)
                        ).fetchone()
                        state = None if row is None else row[0]
                    if state != "sent":
                        self._db.execute(
                            "INSERT OR REPLACE INTO sends VALUES (?, 'sending', NULL, ?, NULL)",
                            (key, now),
                        )
                    found.append(state)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return found

    def mark_many(self, marks: list[tuple[str, str, str | None, str | None]]) -> None:
        """``mark`` for several jobs (key, state, whatsapp_id, user_id) in one transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO sends VALUES (?, ?, ?, ?, ?)",
                    [(key, state, wid, now, user) for key, state, wid, user in marks],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark(
        self, key: str, state: str, whatsapp_id: str | None = None, user_id: str | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sends VALUES (?, ?, ?, ?, ?)",
                (key, state, whatsapp_id, time.time(), user_id),
            )

    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        """(job key, user id) of the job WhatsApp knows as ``whatsapp_id`` (for receipts)."""
        with self._lock:
            row = self._db.execute(
                "SELECT key, user_id FROM sends WHERE whatsapp_id = ?", (whatsapp_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def prune(self, older_than: float) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM sends WHERE updated_at < ?", (time.time() - older_than,)
            )
        return cursor.rowcount

    def count(self, state: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM sends WHERE state = ?", (state,)
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class AsyncLedger:
    """The ledger from trio: each call in a worker thread, one at a time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> AsyncLedger:
        return cls(await trio.to_thread.run_sync(Ledger, path))

    async def begin(self, key: str, *, check: bool) -> str | None:
        return await trio.to_thread.run_sync(
            lambda: self.ledger.begin(key, check=check), limiter=self._limiter
        )

    async def mark(
        self, key: str, state: str, whatsapp_id: str | None = None, user_id: str | None = None
    ) -> None:
        await trio.to_thread.run_sync(
            self.ledger.mark, key, state, whatsapp_id, user_id, limiter=self._limiter
        )

    async def begin_many(self, requests: list[tuple[str, bool]]) -> list[str | None]:
        return await trio.to_thread.run_sync(
            self.ledger.begin_many, requests, limiter=self._limiter
        )

    async def mark_many(self, marks: list[tuple[str, str, str | None, str | None]]) -> None:
        await trio.to_thread.run_sync(self.ledger.mark_many, marks, limiter=self._limiter)

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
