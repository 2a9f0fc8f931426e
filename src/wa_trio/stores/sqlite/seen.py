"""Meta's webhook items already handled, on SQLite (``webhooks.db`` in the session folder)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from wa_trio.stores.files import open_private_db


class SqliteSeen:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_private_db(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, seen_at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_at ON seen (seen_at)")

    def recent(self, since: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM seen WHERE seen_at >= ? ORDER BY seen_at DESC LIMIT ?",
                (since, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def add(self, keys: Sequence[tuple[str, float]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", keys)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def prune(self, older_than: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM seen WHERE seen_at < ?", (older_than,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["SqliteSeen"]
