"""The contact store on SQLite (``contacts.db``, or ``optouts.db`` shared by several accounts).

The protocol and records are in ``stores/contacts.py``; blocking: call it from a worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

from wa_trio.stores.contacts import RECENT, OptOut, Snapshot
from wa_trio.stores.files import open_private_db


class ContactStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_private_db(path)  # autocommit: one statement, one transaction
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS optouts (number TEXT PRIMARY KEY, added_at REAL NOT NULL, "
            "source TEXT NOT NULL, replied INTEGER NOT NULL DEFAULT 0)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS contacts (number TEXT PRIMARY KEY, unanswered INTEGER "
            "NOT NULL DEFAULT 0, last_sent_at REAL, last_reply_at REAL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def data_version(self) -> int:
        """Changes when another connection committed (our own commits do not change it)."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def snapshot(self) -> Snapshot:
        with self._lock:
            optouts = frozenset(row[0] for row in self._db.execute("SELECT number FROM optouts"))
            counts = dict(self._db.execute("SELECT number, unanswered FROM contacts").fetchall())
            recent = self._db.execute(
                "SELECT number, last_sent_at FROM contacts WHERE last_sent_at >= ?",
                (time.time() - RECENT,),
            ).fetchall()
        return Snapshot(optouts, counts, dict(recent))

    # ---------------------------------------------------------------------------- opt-outs

    def add_optout(self, number: str, source: str, now: float | None = None) -> bool:
        """True when the number was not opted out before."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO optouts (number, added_at, source) VALUES (?, ?, ?)",
                (number, time.time() if now is None else now, source),
            )
            return cursor.rowcount == 1

    def remove_optout(self, number: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM optouts WHERE number = ?", (number,))
            return cursor.rowcount == 1

    def optouts(self) -> list[OptOut]:
        with self._lock:
            rows = self._db.execute(
                "SELECT number, added_at, source FROM optouts ORDER BY added_at"
            ).fetchall()
        return [OptOut(*row) for row in rows]

    def claim_reply(self, number: str) -> bool:
        """True once per opt-out: the one answer may go out now."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE optouts SET replied = 1 WHERE number = ? AND replied = 0", (number,)
            )
            return cursor.rowcount == 1

    # --------------------------------------------------------------------- unanswered counts

    def record(self, sent: Mapping[str, int], replies: Mapping[str, float], now: float) -> None:
        """Add ``sent`` messages per recipient, then reset those who wrote (one transaction)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO contacts (number, unanswered, last_sent_at) VALUES (?, ?, ?) "
                "ON CONFLICT(number) DO UPDATE SET unanswered = unanswered + excluded.unanswered, "
                "last_sent_at = excluded.last_sent_at",
                [(number, count, now) for number, count in sent.items()],
            )
            self._db.executemany(
                "INSERT INTO contacts (number, unanswered, last_reply_at) VALUES (?, 0, ?) "
                "ON CONFLICT(number) DO UPDATE SET unanswered = 0, "
                "last_reply_at = excluded.last_reply_at",
                list(replies.items()),
            )
            self._db.execute("COMMIT")
