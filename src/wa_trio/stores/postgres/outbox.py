"""The signed-webhook outbox of one account in PostgreSQL (``stores.outbox.Outbox``).

Events reach it from the replica's local outbox (``WebhookSink``'s relay: the local commit before
each ack stays on the trio thread, the move to the store is a batch in a worker thread), so the
account's events are delivered by whichever replica holds the account."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg

from wa_trio.stores.outbox import Pending
from wa_trio.stores.postgres.db import store_errors
from wa_trio.stores.postgres.pool import Pooled


class PgOutbox:
    """The account's outbox in PostgreSQL (``stores.outbox.Outbox``, plus the relay's
    ``add_relayed``)."""

    inline = False  # across the network: a worker thread

    def __init__(self, url: str, account: str, max_pending: int) -> None:
        self.account = account
        self._max = max_pending
        self._lock = threading.Lock()
        self._db = Pooled(url)

    def add_relayed(self, items: list[tuple[str, bytes, float]]) -> int:
        """Events (job key, body, created) moved from a local outbox, in one transaction; the
        number of old ones dropped to keep the bound."""
        with self._lock, store_errors("write the webhook outbox"), self._db.transaction():
            if items:
                self._db.cursor().executemany(
                    "INSERT INTO wa_trio_webhook_outbox (account, job_key, body, created, "
                    "next_at) VALUES (%s, %s, %s, %s, %s)",
                    [(self.account, key, body, created, created) for key, body, created in items],
                )
            row = self._db.execute(
                "SELECT count(*) FROM wa_trio_webhook_outbox WHERE account = %s", (self.account,)
            ).fetchone()
            dropped = max(0, int(row[0] if row else 0) - self._max)
            if dropped:
                self._db.execute(
                    "DELETE FROM wa_trio_webhook_outbox WHERE id IN (SELECT id FROM "
                    "wa_trio_webhook_outbox WHERE account = %s ORDER BY id LIMIT %s)",
                    (self.account, dropped),
                )
        return dropped

    def next_due(self, now: float) -> Pending | None:
        """The oldest due event whose job has no older event pending (order per job)."""
        with self._lock, store_errors("read the webhook outbox"):
            row = self._db.execute(
                "SELECT id, job_key, body, attempts FROM wa_trio_webhook_outbox o WHERE "
                "account = %s AND next_at <= %s AND NOT EXISTS (SELECT 1 FROM "
                "wa_trio_webhook_outbox p WHERE p.account = o.account AND p.job_key = o.job_key "
                "AND p.id < o.id) ORDER BY id LIMIT 1",
                (self.account, now),
            ).fetchone()
        if row is None:
            return None
        return Pending(int(row[0]), str(row[1]), bytes(row[2]), int(row[3]))

    def next_time(self) -> float | None:
        with self._lock, store_errors("read the webhook outbox"):
            row = self._db.execute(
                "SELECT min(next_at) FROM wa_trio_webhook_outbox WHERE account = %s",
                (self.account,),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def remove(self, event_id: int) -> None:
        with self._lock, store_errors("write the webhook outbox"):
            self._db.execute("DELETE FROM wa_trio_webhook_outbox WHERE id = %s", (event_id,))

    def later(self, event_id: int, next_at: float) -> None:
        with self._lock, store_errors("write the webhook outbox"):
            self._db.execute(
                "UPDATE wa_trio_webhook_outbox SET attempts = attempts + 1, next_at = %s "
                "WHERE id = %s",
                (next_at, event_id),
            )

    def stats(self) -> tuple[int, float | None]:
        with self._lock, store_errors("read the webhook outbox"):
            row: Any = self._db.execute(
                "SELECT count(*), min(created) FROM wa_trio_webhook_outbox WHERE account = %s",
                (self.account,),
            ).fetchone()
        return int(row[0]), None if row[1] is None else float(row[1])

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()


__all__ = ["PgOutbox"]
