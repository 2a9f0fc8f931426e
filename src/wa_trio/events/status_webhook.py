"""Signed status webhooks: every status event also POSTed to WHATSAPP_STATUS_WEBHOOK_URL.

- Durable and at-least-once: an event goes into an outbox (a table in the ledger's SQLite file)
  before its job is acked, and stays there until the receiver answers 2xx. A restart delivers
  what was pending. With WHATSAPP_STORE=postgresql a relay moves events from that local outbox
  into the account's outbox in PostgreSQL (a batch in a worker thread, within a second), and
  delivery is from there: whichever replica holds the account delivers its events.
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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import eliot
import trio

from wa_trio import http_client
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.retry import Backoff
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.outbox import Outbox, Pending
from wa_trio.stores.sqlite.outbox import SqliteOutbox

if TYPE_CHECKING:
    from wa_trio.stores.postgres import PgOutbox

_T = TypeVar("_T")

SIGNATURE = "X-Wa-Trio-Signature"
TIMESTAMP = "X-Wa-Trio-Timestamp"
WINDOW = 300.0  # seconds a receiver accepts a timestamp
RETRY_AFTER_CAP = 3600.0
RELAY_EVERY = 1.0  # seconds between moves of local events to the store (woken by new ones)
RELAY_BATCH = 200
RELAY_LAST = 2.0  # seconds the last move may take when the worker stops


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


#: deliveries answered with a redirect before the event counts as rejected
REDIRECT_ATTEMPTS = 5


def redirect(status: int) -> bool:
    """A 3xx: the receiver moved (http -> https, say); never success."""
    return 300 <= status < 400


@attrs.frozen
class WebhookStatistics:
    """What the signed-webhook sink holds now: events on this volume (the local outbox) and,
    with the PostgreSQL store, in the account's outbox there as last seen by the relay."""

    local_pending: int
    shared_pending: int


class WebhookSink:
    """Adds events to the outbox (trio thread, before the ack) and delivers them (a task)."""

    def statistics(self) -> WebhookStatistics:
        local = self._outbox.stats()[0] if self._outbox is not None else 0
        return WebhookStatistics(local, self._shared_stats[0])

    def __init__(self, settings: Settings, metrics: Metrics, backoff: Backoff | None = None):
        self.settings = settings
        self.metrics = metrics
        self.enabled = bool(settings.status_webhook_url)
        self.backoff = backoff or Backoff(initial=1.0, cap=300.0)
        self._outbox: SqliteOutbox | None = None  # events are added here, before the ack
        self._shared: PgOutbox | None = None  # WHATSAPP_STORE=postgresql: delivered from here
        self._shared_stats: tuple[int, float | None] = (0, None)
        self._wake = trio.Event()
        if self.enabled:
            metrics.webhook_pending.set_function(lambda: float(self._stats()[0]))
            metrics.webhook_oldest.set_function(self._oldest_age)

    def _stats(self) -> tuple[int, float | None]:
        """Local, plus the store's as last read (a scrape never waits on the network)."""
        local = self._outbox.stats() if self._outbox is not None else (0, None)
        shared = self._shared_stats
        oldest = [t for t in (local[1], shared[1]) if t is not None]
        return local[0] + shared[0], min(oldest) if oldest else None

    def _oldest_age(self) -> float:
        oldest = self._stats()[1]
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def open(self) -> None:
        if self.enabled and self._outbox is None:
            self._outbox, self._shared = stores.webhook_outboxes(self.settings)

    def add(self, event: dict[str, Any]) -> None:
        """Store one event durably (a short commit on the trio thread: it precedes an ack)."""
        if self._outbox is None:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        dropped = self._outbox.add([(str(event.get("job_key", "")), body)], time.time())
        if dropped:
            self.metrics.webhook_deliveries.labels("dropped").inc()
            eliot.log_message(message_type="wa_trio:webhook:dropped", events=dropped)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._outbox is None:
            return
        async with trio.open_nursery() as nursery:
            if self._shared is not None:
                nursery.start_soon(self._relay)
            async with http_client.client() as session:
                while True:
                    try:
                        item = await self._io(self._delivery().next_due, time.time())
                    except WaTrioError as error:  # the store is away: try again shortly
                        eliot.log_message(message_type="wa_trio:webhook:store_failing",
                                          error=error.message)  # fmt: skip
                        await trio.sleep(RELAY_EVERY)
                        continue
                    if item is None:
                        await self._sleep_until_due()
                        continue
                    await self._deliver(session, item)

    def _delivery(self) -> Outbox:
        """The outbox delivered from: the store's when there is one, else the local one."""
        outbox = self._shared or self._outbox
        assert outbox is not None
        return outbox

    async def _io(self, call: Callable[..., _T], *args: Any) -> _T:
        """A call on the delivery outbox: inline on the trio thread when it is a local file, in
        a worker thread when it crosses the network."""
        if self._delivery().inline:
            return call(*args)
        return await trio.to_thread.run_sync(call, *args)

    async def _relay(self) -> None:
        """Move events from the local outbox to the store's, a batch at a time (an event is
        removed locally only once the store has it: at least once, never lost). On the way out
        (a stop, a fence) one last move is tried, bounded: what stays waits for this volume."""
        try:
            while True:
                try:
                    moved = await self._relay_once()
                except WaTrioError as error:
                    eliot.log_message(message_type="wa_trio:webhook:relay_failing",
                                      error=error.message)  # fmt: skip
                    await trio.sleep(RELAY_EVERY)
                    continue
                if moved:
                    self._wake.set()
                    continue
                with trio.move_on_after(RELAY_EVERY):
                    await self._wake.wait()
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(RELAY_LAST),
                contextlib.suppress(WaTrioError),
            ):
                while await self._relay_once():
                    pass

    async def _relay_once(self) -> int:
        """One batch moved to the store (its size; 0: nothing to move)."""
        if self._outbox is None or self._shared is None:
            return 0
        shared = self._shared
        batch = self._outbox.oldest(RELAY_BATCH)
        if batch:
            dropped = await trio.to_thread.run_sync(  # abandoned on a cancel: kept locally
                shared.add_relayed,
                [(k, b, c) for _, k, b, c in batch],
                abandon_on_cancel=True,
            )
            self._outbox.remove_many([i for i, _, _, _ in batch])
            if dropped:
                self.metrics.webhook_deliveries.labels("dropped").inc(dropped)
        self._shared_stats = await trio.to_thread.run_sync(shared.stats, abandon_on_cancel=True)
        return len(batch)

    async def _sleep_until_due(self) -> None:
        when = await self._io(self._delivery().next_time)
        wait = 5.0 if when is None else min(5.0, max(0.01, when - time.time()))
        with trio.move_on_after(wait):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _deliver(self, session: Any, item: Pending) -> None:
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
            await self._retry(item, None, error.message)
            return
        if 200 <= answer.status < 300:
            await self._io(self._delivery().remove, item.id)
            self.metrics.webhook_deliveries.labels("delivered").inc()
        elif transient(answer.status) or (
            redirect(answer.status) and item.attempts < REDIRECT_ATTEMPTS
        ):
            # a redirect is never a delivery (we follow none: the event would be lost on the
            # way); retried a few times in case it is a passing misconfiguration, then rejected
            await self._retry(item, answer.retry_after, f"HTTP {answer.status}")
        else:
            await self._io(self._delivery().remove, item.id)
            self.metrics.webhook_deliveries.labels("rejected").inc()
            eliot.log_message(
                message_type="wa_trio:webhook:rejected", status=answer.status, job_key=item.job_key
            )

    async def _retry(self, item: Pending, retry_after: float | None, why: str) -> None:
        delay = self.backoff.delay_for(item.attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        await self._io(self._delivery().later, item.id, time.time() + delay)
        self.metrics.webhook_deliveries.labels("retried").inc()
        eliot.log_message(
            message_type="wa_trio:webhook:retry", why=why, attempt=item.attempts + 1,
            retry_in=round(delay, 3),
        )  # fmt: skip

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None


__all__ = [
    "SIGNATURE",
    "TIMESTAMP",
    "WebhookSink",
    "WebhookStatistics",
    "sign",
    "transient",
    "verify",
]
