"""Meta's webhook items already handled, in PostgreSQL: whichever replica holds the account
sees what another one handled (the same calls as ``stores/sqlite/seen.SqliteSeen``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from wa_trio.stores.postgres.db import store_errors
from wa_trio.stores.postgres.pool import Pooled


class PgSeen:
    def __init__(self, url: str, account: str) -> None:
        self._lock = threading.Lock()
        self._account = account
        self._db = Pooled(url)

    def recent(self, since: float, limit: int) -> list[str]:
        with self._lock, store_errors("read the webhook items seen"):
            rows = self._db.execute(
                "SELECT key FROM wa_trio_webhook_seen WHERE account = %s AND seen_at >= %s "
                "ORDER BY seen_at DESC LIMIT %s",
                (self._account, since, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def add(self, keys: Sequence[tuple[str, float]]) -> None:
        with (
            self._lock,
            store_errors("record webhook items"),
            self._db.transaction(),
            self._db.cursor() as cursor,
        ):
            cursor.executemany(
                "INSERT INTO wa_trio_webhook_seen VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(self._account, key, at) for key, at in keys],
            )

    def prune(self, older_than: float) -> int:
        with self._lock, store_errors("prune the webhook items seen"), self._db.transaction():
            cursor = self._db.execute(
                "DELETE FROM wa_trio_webhook_seen WHERE account = %s AND seen_at < %s",
                (self._account, older_than),
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["PgSeen"]
