"""The signed-webhook outbox on SQLite: a table in the ledger's file, committed before each ack.

Blocking, and fast enough for the trio thread (a local WAL commit). With the PostgreSQL store a
relay moves its events to the account's outbox there (``stores/postgres/outbox.py``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from wa_trio.stores.files import open_private_db

if TYPE_CHECKING:
    pass
from wa_trio.stores.outbox import Pending


class SqliteOutbox:
    """The webhook outbox (blocking sqlite3; the file is the ledger's, the table its own)."""

    inline = True  # a local WAL commit: cheaper on the trio thread than a thread hop

    def __init__(self, path: Path, max_pending: int) -> None:
        self._lock = threading.Lock()
        self._max = max_pending
        self._db = open_private_db(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS webhook_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "job_key TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL)"
        )

    def add(self, items: list[tuple[str, bytes]], now: float) -> int:
        """Store events (job key, body) in one transaction; the number of old ones dropped."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO webhook_outbox (job_key, body, created, next_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(key, body, now, now) for key, body in items],
                )
                (count,) = self._db.execute("SELECT count(*) FROM webhook_outbox").fetchone()
                dropped = max(0, int(count) - self._max)
                if dropped:
                    self._db.execute(
                        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
                        "ORDER BY id LIMIT ?)",
                        (dropped,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        return dropped

    def next_due(self, now: float) -> Pending | None:
        """The oldest due event whose job has no older event pending (order per job)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, job_key, body, attempts FROM webhook_outbox o WHERE next_at <= ? "
                "AND NOT EXISTS (SELECT 1 FROM webhook_outbox p WHERE p.job_key = o.job_key "
                "AND p.id < o.id) ORDER BY id LIMIT 1",
                (now,),
            ).fetchone()
        return None if row is None else Pending(row[0], row[1], row[2], row[3])

    def next_time(self) -> float | None:
        with self._lock:
            (when,) = self._db.execute("SELECT min(next_at) FROM webhook_outbox").fetchone()
        return None if when is None else float(when)

    def remove(self, event_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM webhook_outbox WHERE id = ?", (event_id,))

    def later(self, event_id: int, next_at: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                (next_at, event_id),
            )

    def oldest(self, limit: int) -> list[tuple[int, str, bytes, float]]:
        """(id, job key, body, created) of the oldest events (the relay's next batch)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_key, body, created FROM webhook_outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def remove_many(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM webhook_outbox WHERE id = ?", [(i,) for i in ids])

    def stats(self) -> tuple[int, float | None]:
        """(pending events, creation time of the oldest)."""
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT count(*), min(created) FROM webhook_outbox"
            ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    def close(self) -> None:
        with self._lock:
            self._db.close()
