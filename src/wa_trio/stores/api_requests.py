"""What the HTTP send API accepted (issue 32), by job key: the body's hash (an
``Idempotency-Key`` used again with another body is a conflict, the rule the ledger applies),
the client, and the last status the worker reported for it (queued, sent with the WhatsApp id,
delivered, read, failed with a code, retrying), for ``GET /v1/messages/{job_key}``.

SQLite in the session folder (``api.db``), or ``postgres.PgApiRequests`` (every replica's API
sees it): chosen by ``stores/open.api_requests``. Blocking: call it from a worker thread (the
status update is one short UPDATE by primary key).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Protocol

import attrs

from wa_trio.stores.files import open_private_db


@attrs.frozen
class Accepted:
    job_key: str
    body_hash: str
    client: str
    created_at: float
    status: str = "queued"
    code: str | None = None
    whatsapp_id: str | None = None
    updated_at: float = 0.0


class ApiRequests(Protocol):
    def accept(self, job_key: str, body_hash: str, client: str, now: float) -> Accepted | None:
        """Record a new request; the earlier one (None: this one is new)."""
        ...

    def forget(self, job_key: str) -> None:
        """Take back a request whose publish failed (the client may try the key again)."""
        ...

    def get(self, job_key: str) -> Accepted | None: ...

    def update(
        self,
        job_key: str,
        status: str,
        code: str | None,
        whatsapp_id: str | None,
        now: float,
        over: tuple[str, ...] | None = None,
    ) -> None:
        """Set the job's status (only over one of ``over``: a later event never moves it back;
        None: over any); a key the API never accepted is left alone."""
        ...

    def prune(self, older_than: float) -> int: ...

    def close(self) -> None: ...


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


__all__ = ["Accepted", "ApiRequests", "SqliteApiRequests"]
