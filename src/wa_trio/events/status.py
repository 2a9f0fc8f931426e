"""Status events back to the publisher: sent, delivered, read, failed, retrying.

Published as JSON to WHATSAPP_EXCHANGE with WHATSAPP_STATUS_ROUTING_KEY (empty: off), schema in
docs/status-event.schema.json. Sending never waits for them: ``emit`` puts the event in a
bounded buffer and returns; the publisher task sends it on a connection of its own under
publisher confirms and keeps it until confirmed (reconnecting with backoff). If the buffer is
full (the broker is gone for a long time), the oldest events are dropped and counted.
Delivered/read come from neonize Receipt events (and Cloud API status webhooks, which also
report ``failed`` with a code after Meta accepted a message), mapped back to the job through
the send ledger.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import eliot
import trio

from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.bus.confirmed_outbox import BusOutbox
from wa_trio.config.settings import Settings
from wa_trio.core.instants import epoch_seconds
from wa_trio.events.status_webhook import WebhookSink
from wa_trio.log import log_contained
from wa_trio.metrics import STATUS_EVENTS, Metrics
from wa_trio.stores.ledger import AsyncLedger, LedgerError
from wa_trio.transport.receipts import ReceiptInfo

SCHEMA_VERSION = 1
STATUSES = STATUS_EVENTS
BUFFER = 10_000


def make_event(
    status: str,
    *,
    job_key: str,
    user_id: str | None,
    whatsapp_message_id: str | None = None,
    code: str | None = None,
    retry: int | None = None,
    at: datetime | None = None,
    fallback_from: str | None = None,
) -> dict[str, Any]:
    """One event (pure). See docs/status-events.md."""
    assert status in STATUSES, status
    event: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "status": status,
        "job_key": job_key,
        "user_id": user_id,
        "whatsapp_message_id": whatsapp_message_id,
        "timestamp": (at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
    }
    if code is not None:
        event["code"] = code
    if retry is not None:
        event["retry"] = retry
    if fallback_from is not None:  # sent by the Cloud API for this account (WHATSAPP_FALLBACK)
        event["fallback_from"] = fallback_from
    return event


@attrs.frozen
class StatusStatistics:
    pending: int  # events buffered, not yet confirmed by the broker
    oldest_job_key: str | None


#: receipts remembered for de-duplication (message id and status)
SEEN_RECEIPTS = 20_000


class StatusPublisher:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        ledger: AsyncLedger | None,
        webhook: WebhookSink | None = None,
    ) -> None:
        self.webhook = webhook
        #: told every event (the HTTP API keeps each job's last status: ``web/api.py``)
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        self.settings = settings
        self.metrics = metrics
        self.ledger = ledger
        self.enabled = bool(settings.status_routing_key)
        self.address = BrokerAddress.from_settings(settings)
        self._outbox = BusOutbox(
            self.address,
            settings.exchange,
            settings.status_routing_key,
            what="wa_trio:status",
            capacity=BUFFER,
            properties_of=_properties,
            on_confirmed=lambda event: metrics.status_events.labels(event["status"]).inc(),
            on_drop=metrics.status_events_dropped.inc,
            key=lambda event: str(event["job_key"]),
        )
        self._receipts_in, self._receipts_out = trio.open_memory_channel[ReceiptInfo](BUFFER)
        #: (WhatsApp message id, status) already emitted: a group's members and each of a
        #: person's devices send their own receipt; one event per job and status (bounded)
        self._emitted: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        metrics.status_events_pending.set_function(lambda: len(self._outbox))

    def emit(self, event: dict[str, Any]) -> None:
        """Queue an event; never blocks. With a webhook, the event is first stored in its
        durable outbox (callers emit before they ack)."""
        if self.webhook is not None:
            self.webhook.add(event)
        for observe in self.observers:
            observe(event)
        if self.enabled:
            self._outbox.put(event)

    def on_receipt(self, receipt: ReceiptInfo) -> None:
        """Receipt from the transport (trio thread); mapped to jobs by the publisher task."""
        if (self.enabled or self.webhook is not None or self.observers) and receipt.kind in {
            "delivered",
            "read",
            "failed",
        }:
            try:
                self._receipts_in.send_nowait(receipt)
            except trio.WouldBlock:
                self.metrics.status_events_dropped.inc()

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def statistics(self) -> StatusStatistics:
        oldest = self._outbox.oldest()
        return StatusStatistics(
            pending=len(self._outbox), oldest_job_key=oldest["job_key"] if oldest else None
        )

    async def drain(self) -> None:
        """Return once every buffered event is confirmed (the caller bounds the wait).

        Graceful shutdown calls it after the last job, so the last jobs' events are not lost.
        """
        if self.enabled:
            await self._outbox.drain()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.enabled and self.webhook is None and not self.observers:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._map_receipts)
            if self.enabled:
                await self._outbox.run()

    async def _map_receipts(self) -> None:
        async for receipt in self._receipts_out:
            try:
                await self._map_receipt(receipt)
            except (LedgerError, trio.Cancelled):
                raise
            except Exception as error:  # noqa: BLE001 - one receipt's bulkhead
                self.metrics.contained.labels("receipt").inc()
                log_contained("wa_trio:status:receipt_failed", error)

    def _first(self, message_id: str, kind: str) -> bool:
        """Whether this is the first receipt of ``kind`` for ``message_id`` (and remember it)."""
        key = (message_id, kind)
        if key in self._emitted:
            return False
        self._emitted[key] = None
        while len(self._emitted) > SEEN_RECEIPTS:
            self._emitted.popitem(last=False)
        return True

    async def _map_receipt(self, receipt: ReceiptInfo) -> None:
        for message_id in receipt.message_ids:
            if not self._first(message_id, receipt.kind):
                continue
            job = await self.ledger.find_by_whatsapp_id(message_id) if self.ledger else None
            if job is None:
                self.metrics.receipts_unmatched.inc()  # not ours, or already pruned
                continue
            # the job's story (``wa-trio trace``) reads receipts from the log: key and kind only
            eliot.log_message(
                message_type="wa_trio:status:receipt",
                job_key=job[0],
                status=receipt.kind,
                whatsapp_message_id=message_id,
            )
            seconds = epoch_seconds(receipt.timestamp)
            at = datetime.fromtimestamp(seconds, UTC) if seconds else None
            self.emit(
                make_event(
                    receipt.kind,
                    job_key=job[0],
                    user_id=job[1],
                    whatsapp_message_id=message_id,
                    code=receipt.code,
                    at=at,
                )
            )


def _properties(event: dict[str, Any]) -> Properties:
    return Properties(
        content_type="application/json",
        type_name=f"whatsapp.status.{event['status']}",
        message_id=f"{event['job_key']}:{event['status']}",
    )
