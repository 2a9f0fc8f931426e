"""Signed status webhooks: every status event also POSTed to WHATSAPP_STATUS_WEBHOOK_URL.

- Durable and at-least-once: an event goes into an outbox (a table in the ledger's SQLite file)
  before its job is acked, and stays there until the receiver answers 2xx. A restart delivers
  what was pending.
- Signed: ``X-Wa-Trio-Timestamp: <unix seconds>`` and ``X-Wa-Trio-Signature: sha256=<hex of
  HMAC-SHA256(secret, "<timestamp>.<raw body>")>`` (``sign``; ``verify`` is what a receiver
  does: constant-time compare, 5-minute window; docs/status-events.md).
- Retried with capped exponential backoff and jitter on timeouts, connection errors, 429 and 5xx
  (``Retry-After`` honoured, capped at an hour); never on another 4xx (dropped, counted, logged).
- Order per job is kept (an event waits while an older one of its job is pending); a stuck
  receiver never blocks sending; the outbox is bounded (WHATSAPP_STATUS_WEBHOOK_MAX_PENDING,
  oldest dropped and counted).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import eliot
import trio

from wa_trio import http_client
from wa_trio.config import Settings
from wa_trio.files import open_private_db
from wa_trio.metrics import Metrics
from wa_trio.policy import Backoff

SIGNATURE = "X-Wa-Trio-Signature"
TIMESTAMP = "X-Wa-Trio-Timestamp"
WINDOW = 300.0  # seconds a receiver accepts a timestamp
RETRY_AFTER_CAP = 3600.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>.<raw body>")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature (constant time)."""
    try:
        when = int(timestamp)
    except ValueError:
        return False
    if abs(now - when) > WINDOW:
        return False
    return hmac.compare_digest(sign(secret, when, body), signature)


def transient(status: int) -> bool:
    """Whether an answer is worth retrying (429 and 5xx; any other non-2xx is final)."""
    return status == 429 or status >= 500


@attrs.frozen
class Pending:
    id: int
    job_key: str
    body: bytes
    attempts: int


class Outbox:
    """The webhook outbox (blocking sqlite3; the file is the ledger's, the table its own)."""

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


class WebhookSink:
    """Adds events to the outbox (trio thread, before the ack) and delivers them (a task)."""

    def __init__(self, settings: Settings, metrics: Metrics, backoff: Backoff | None = None):
        self.settings = settings
        self.metrics = metrics
        self.enabled = bool(settings.status_webhook_url)
        self.backoff = backoff or Backoff(initial=1.0, cap=300.0)
        self._outbox: Outbox | None = None
        self._wake = trio.Event()
        if self.enabled:
            metrics.webhook_pending.set_function(lambda: float(self._stats()[0]))
            metrics.webhook_oldest.set_function(self._oldest_age)

    def _stats(self) -> tuple[int, float | None]:
        return self._outbox.stats() if self._outbox is not None else (0, None)

    def _oldest_age(self) -> float:
        oldest = self._stats()[1]
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def open(self) -> None:
        if self.enabled and self._outbox is None:
            self._outbox = Outbox(self.settings.ledger_db, self.settings.status_webhook_max_pending)

    def add(self, event: dict[str, Any]) -> None:
        """Store one event durably (a short commit on the trio thread: it precedes an ack)."""
        if self._outbox is None:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        dropped = self._outbox.add([(str(event.get("job_key", "")), body)], time.time())
        if dropped:
            self.metrics.webhook_deliveries.labels("dropped").inc(dropped)
            eliot.log_message(message_type="wa_trio:webhook:dropped", events=dropped)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._outbox is None:
            return
        async with http_client.client() as session:
            while True:
                item = self._outbox.next_due(time.time())
                if item is None:
                    await self._sleep_until_due()
                    continue
                await self._deliver(session, item)

    async def _sleep_until_due(self) -> None:
        assert self._outbox is not None
        when = self._outbox.next_time()
        wait = 5.0 if when is None else min(5.0, max(0.01, when - time.time()))
        with trio.move_on_after(wait):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _deliver(self, session: Any, item: Pending) -> None:
        assert self._outbox is not None
        now = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP: str(now),
            SIGNATURE: sign(self.settings.status_webhook_secret or "", now, item.body),
        }
        url = self.settings.status_webhook_url or ""
        try:
            answer = await http_client.post(session, url, item.body, headers)
        except http_client.HttpError as error:
            self._retry(item, None, error.message)
            return
        if 200 <= answer.status < 300:
            self._outbox.remove(item.id)
            self.metrics.webhook_deliveries.labels("delivered").inc()
        elif transient(answer.status):
            self._retry(item, answer.retry_after, f"HTTP {answer.status}")
        else:
            self._outbox.remove(item.id)
            self.metrics.webhook_deliveries.labels("rejected").inc()
            eliot.log_message(
                message_type="wa_trio:webhook:rejected", status=answer.status, job_key=item.job_key
            )

    def _retry(self, item: Pending, retry_after: float | None, why: str) -> None:
        assert self._outbox is not None
        delay = self.backoff.delay_for(item.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        self._outbox.later(item.id, time.time() + delay)
        self.metrics.webhook_deliveries.labels("retried").inc()
        eliot.log_message(
            message_type="wa_trio:webhook:retry", why=why, attempt=item.attempts + 1,
            retry_in=round(delay, 3),
        )  # fmt: skip

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None


__all__ = ["SIGNATURE", "TIMESTAMP", "Outbox", "WebhookSink", "sign", "transient", "verify"]
