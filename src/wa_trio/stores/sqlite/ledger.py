"""The send ledger on SQLite (``ledger.db`` in the session folder, WAL mode; blocking).

The rules, records and ``AsyncLedger`` are in ``stores/ledger.py``; this is one backend of
``LedgerStore`` (the other: ``stores/postgres/ledger.py``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from wa_trio.core.outcome import Found, begin_writes
from wa_trio.stores.files import open_private_db
from wa_trio.stores.ledger import Begin, Entry, LedgerError, Mark, Shortcuts

_COLUMNS = "(key, state, whatsapp_id, updated_at, user_id, body_hash)"


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
