"""The "is it on WhatsApp" cache on SQLite (``numbers.db`` in the session folder; blocking)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from wa_trio.stores.files import open_private_db
from wa_trio.stores.numbers import Resolution

SCHEMA_VERSION = 2  # 2: rows of 1 may hold a LID where a number belongs (dropped)


class NumberCache:
    def __init__(self, path: Path, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._db = open_private_db(path)
        if int(self._db.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
            self._db.execute("DROP TABLE IF EXISTS numbers")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS numbers (number TEXT PRIMARY KEY, on_whatsapp INTEGER "
            "NOT NULL, jid_user TEXT NOT NULL, checked_at REAL NOT NULL)"
        )

    def get(self, number: str, now: float | None = None) -> Resolution | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "SELECT on_whatsapp, jid_user, checked_at FROM numbers WHERE number = ?", (number,)
            ).fetchone()
        if row is None or now - row[2] > self.ttl:
            return None
        return Resolution(number, bool(row[0]), row[1], row[2])

    def put(self, resolution: Resolution) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO numbers VALUES (?, ?, ?, ?)",
                (
                    resolution.number,
                    int(resolution.on_whatsapp),
                    resolution.jid_user,
                    resolution.checked_at,
                ),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
