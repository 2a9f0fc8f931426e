"""Dead-letter queue triage: list what was dead-lettered and why; replay after a fix.

``list`` takes messages with basic.get *without* acking them and closes the channel, so the
broker puts every one back where it was. ``replay`` republishes the matching ones to the job
exchange under publisher confirms and only then acks them; the rest go back untouched. A
replayed job keeps its message_id, so the send ledger still stops a job that had in fact been
sent from going out twice: replaying twice is harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from wa_trio import amqp
from wa_trio.amqp import BrokerAddress, Properties
from wa_trio.config import Settings

_STRIP = (
    "x-error-code",
    "x-error-message",
    "x-failed-at",
    "x-retry-count",
    "x-last-error-code",
    "x-last-error",
    "x-original-exchange",
    "x-original-routing-key",
)


@attrs.frozen
class DeadLetter:
    message_id: str | None
    code: str
    reason: str
    failed_at: str | None
    retry_count: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _describe(message: Any) -> DeadLetter:
    headers = Properties.of(message.header).headers
    return DeadLetter(
        message_id=message.header.message_id,
        code=str(headers.get("x-error-code", "unknown")),
        reason=str(headers.get("x-error-message", "")),
        failed_at=headers.get("x-failed-at"),
        retry_count=int(headers.get("x-retry-count", 0) or 0),
        size=len(message.body),
    )


async def list_dead_letters(settings: Settings, limit: int = 100) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            while len(found) < limit:
                message = await channel.basic_get(settings.dlq_name, no_ack=False)
                if message is None:
                    break
                found.append(_describe(message))
        # closing the channel returned every message to the queue
    return found


@attrs.frozen
class ReplayReport:
    replayed: int
    left: int


async def replay(
    settings: Settings, *, code: str | None = None, limit: int | None = None
) -> ReplayReport:
    replayed = left = 0
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as getter, connection.open_channel() as publisher:
            while limit is None or replayed < limit:
                message = await getter.basic_get(settings.dlq_name, no_ack=False)
                if message is None:
                    break
                props = Properties.of(message.header)
                if code is not None and props.headers.get("x-error-code") != code:
                    left += 1
                    continue  # stays unacked: back in the queue when the channel closes
                headers = {k: v for k, v in props.headers.items() if k not in _STRIP}
                headers["x-replayed-at"] = datetime.now(UTC).isoformat(timespec="seconds")
                await amqp.publish(
                    publisher,
                    settings.exchange,
                    settings.routing_key,
                    message.body,
                    attrs.evolve(props, headers=headers),
                )
                await message.ack()
                replayed += 1
    return ReplayReport(replayed=replayed, left=left)
