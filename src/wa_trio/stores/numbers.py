"""Number -> "is it on WhatsApp" cache (sqlite3, blocking: call it from a worker thread).

``is_on_whatsapp`` is a round trip to WhatsApp and a signal of automation when repeated; the
answer rarely changes, so it is kept for a week (``NUMBER_CACHE_TTL`` of the neonize transport).
The look-up only answers "is on WhatsApp": the JID it returns may be the contact's LID
(``<id>@lid``), which is not a phone number, so we always send to the phone-number JID we asked
about and whatsmeow maps it to the LID itself. Schema version 2 dropped the rows of version 1,
which could hold a LID as the number to send to.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import attrs

from wa_trio.stores.files import open_private_db

SCHEMA_VERSION = 2  # 2: rows of 1 may hold a LID where a number belongs (dropped)


@attrs.frozen
class Resolution:
    number: str  # E.164
    on_whatsapp: bool
    jid_user: str  # the phone number's digits, the JID user we send to ("" when not on WhatsApp)
    checked_at: float


class Numbers(Protocol):
    """This SQLite cache, or ``postgres.PgNumberCache`` (shared by every replica)."""

    def get(self, number: str, now: float | None = None) -> Resolution | None: ...
    def put(self, resolution: Resolution) -> None: ...
    def close(self) -> None: ...


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
