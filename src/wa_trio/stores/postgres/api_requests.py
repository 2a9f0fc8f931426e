"""What the HTTP send API accepted, in PostgreSQL: every replica's API answers for every job
(the same calls as ``stores/api_requests.SqliteApiRequests``)."""

from __future__ import annotations

import contextlib
import threading

import psycopg

from wa_trio.stores.api_requests import Accepted
from wa_trio.stores.postgres.db import store_errors
from wa_trio.stores.postgres.pool import Pooled


class PgApiRequests:
    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self._db = Pooled(url)

    def accept(self, job_key: str, body_hash: str, client: str, now: float) -> Accepted | None:
        with self._lock, store_errors("record an API request"):
            inserted = self._db.execute(
                "INSERT INTO wa_trio_api_requests VALUES (%s, %s, %s, %s, 'queued', NULL, NULL, "
                "%s) ON CONFLICT (key) DO NOTHING",
                (job_key, body_hash, client, now, now),
            ).rowcount
            if inserted:
                return None
            row = self._db.execute(
                "SELECT key, body_hash, client, created_at, status, code, whatsapp_id, updated_at "
                "FROM wa_trio_api_requests WHERE key = %s",
                (job_key,),
            ).fetchone()
        return None if row is None else Accepted(*row)

    def forget(self, job_key: str) -> None:
        with self._lock, store_errors("forget an API request"):
            self._db.execute(
                "DELETE FROM wa_trio_api_requests WHERE key = %s AND status = 'queued'", (job_key,)
            )

    def get(self, job_key: str) -> Accepted | None:
        with self._lock, store_errors("read an API request"):
            row = self._db.execute(
                "SELECT key, body_hash, client, created_at, status, code, whatsapp_id, updated_at "
                "FROM wa_trio_api_requests WHERE key = %s",
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
        allowed = None if over is None else list(over)
        with self._lock, store_errors("update an API request"):
            self._db.execute(
                "UPDATE wa_trio_api_requests SET status = %s, code = %s, "
                "whatsapp_id = COALESCE(%s, whatsapp_id), updated_at = %s WHERE key = %s "
                "AND (%s::text[] IS NULL OR status = ANY(%s::text[]))",
                (status, code, whatsapp_id, now, job_key, allowed, allowed),
            )

    def prune(self, older_than: float) -> int:
        with self._lock, store_errors("prune API requests"):
            return int(
                self._db.execute(
                    "DELETE FROM wa_trio_api_requests WHERE created_at < %s", (older_than,)
                ).rowcount
            )

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()


__all__ = ["PgApiRequests"]
