"""Inbound messages onto the bus (and into account safety).

Every ``InboundMessage`` a transport hands over (neonize ``Message`` events, Cloud API webhook
messages) is counted, given to ``AccountSafety`` (replies reset the unanswered count, opt-out
keywords suppress the sender), logged without its text (masked sender), and - unless
WHATSAPP_INBOUND_ROUTING_KEY is empty - published as JSON to WHATSAPP_EXCHANGE with that key
(docs/inbound-message.schema.json) through a ``BusOutbox``: publisher confirms, a bounded buffer
while the broker is away, drops counted in ``whatsapp_inbound_dropped_total``.

Read receipts are never sent for inbound messages: a blue tick tells the sender a person read
it, which a queue consumer has not (docs/inbound.md).
"""

from __future__ import annotations

from typing import Any

import attrs
import eliot
import trio

from wa_trio.account_safety import AccountSafety
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.bus.confirmed_outbox import BusOutbox
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.transport.inbound import KINDS, InboundMessage, as_event

BUFFER = 10_000


class InboundPublisher:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        redactor: Redactor,
        safety: AccountSafety | None,
    ) -> None:
        self.enabled = bool(settings.inbound_routing_key)
        self.account = settings.account_name
        self.metrics = metrics
        self.redactor = redactor
        self.safety = safety
        self.outbox = BusOutbox(
            BrokerAddress.from_settings(settings),
            settings.exchange,
            settings.inbound_routing_key,
            what="wa_trio:inbound",
            capacity=BUFFER,
            properties_of=_properties,
            on_confirmed=lambda _event: metrics.inbound_published.inc(),
            on_drop=metrics.inbound_dropped.inc,
            key=lambda event: str(event["sender"] or event["group"] or ""),  # per-sender order
        )

    def on_inbound(self, message: InboundMessage) -> None:
        """From the transport (trio thread); never blocks."""
        if message.account != self.account:  # transports do not know their account's name
            message = attrs.evolve(message, account=self.account)
        self.metrics.inbound.labels(message.kind if message.kind in KINDS else "other").inc()
        if self.safety is not None:
            self.safety.on_inbound(message)
        eliot.log_message(
            message_type="wa_trio:inbound",
            sender=self.redactor.phone(message.sender) if message.sender else None,
            group=bool(message.group),
            kind=message.kind,
            whatsapp_message_id=message.message_id,
            chars=len(message.text or ""),
        )
        if self.enabled:
            self.outbox.put(as_event(message))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.enabled:
            await self.outbox.run()


def _properties(event: dict[str, Any]) -> Properties:
    return Properties(
        content_type="application/json",
        type_name="whatsapp.inbound",
        message_id=f"inbound:{event['whatsapp_message_id']}",
    )


__all__ = ["BUFFER", "InboundPublisher"]
