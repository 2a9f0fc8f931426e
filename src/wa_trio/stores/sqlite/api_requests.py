"""What the HTTP send API accepted, on SQLite (``api.db`` in the session folder; blocking)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from wa_trio.stores.api_requests import Accepted
from wa_trio.stores.files import open_private_db


class SqliteApiRequests:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_private_db(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, "
            "client TEXT NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL, code TEXT, "
            "whatsapp_id TEXT, updated_at REAL NOT NULL)"
        )

    def accept(self, job_key: str, body_hash: str, client: str, now: float) -> Accepted | None:
        with self._lock:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, 'queued', NULL, NULL, ?)",
                (job_key, body_hash, client, now, now),
            ).rowcount
            if inserted:
                return None
            row = self._db.execute(
                "SELECT key, body_hash, client, created_at, status, code, whatsapp_id, updated_at "
                "FROM requests WHERE key = ?",
                (job_key,),
            ).fetchone()
        return Accepted(*row)

    def forget(self, job_key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE key = ? AND status = 'queued'", (job_key,))

    def get(self, job_key: str) -> Accepted | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, body_hash, client, created_at, status, code, whatsapp_id, updated_at "
                "FROM requests WHERE key = ?",
                (job_key,),
            ).fetchone()
        return None if row is None else Accepted(*row)

    def update(
        self,
        job_key: str,
        status: str,
        code: str | None,
        whatsapp_id: str | None,
        now: float,
        over: tuple[str, ...] | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE requests SET status = ?, code = ?, "
                "whatsapp_id = COALESCE(?, whatsapp_id), updated_at = ? WHERE key = ? "
                "AND (? IS NULL OR status IN (SELECT value FROM json_each(?)))",
                (
                    status,
                    code,
                    whatsapp_id,
                    now,
                    job_key,
                    None if over is None else 1,
                    json.dumps(over),
                ),
            )

    def prune(self, older_than: float) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "DELETE FROM requests WHERE created_at < ?", (older_than,)
                ).rowcount
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
