"""Dead-letter queue triage: list what was dead-lettered and why; replay after a fix.

``list`` takes messages with basic.get *without* acking them and closes the channel, so the
broker puts every one back where it was. ``replay`` republishes the matching ones to the job
exchange under publisher confirms and only then acks them; the rest go back untouched. A
replayed job keeps its message_id, so the send ledger still stops a job that had in fact been
sent from going out twice: replaying twice is harmless.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Delivery
from wa_trio.config.settings import Settings
from wa_trio.core import headers as h
from wa_trio.core.job import job_key, retry_count
from wa_trio.log import mask_phone

_STRIP = (  # ours: a replayed job starts afresh
    h.ERROR_CODE,
    h.ERROR_MESSAGE,
    h.FAILED_AT,
    h.RETRY_COUNT,
    h.LAST_ERROR_CODE,
    h.LAST_ERROR,
    h.ORIGINAL_EXCHANGE,
    h.ORIGINAL_ROUTING_KEY,
    h.HEADER_NOTES,
)


@attrs.frozen
class DeadLetter:
    message_id: str | None
    code: str
    reason: str
    failed_at: str | None
    retry_count: int
    size: int
    job_key: str = ""
    destination: str | None = None  # masked in production (log.mask_phone)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _describe(message: Delivery, production: bool) -> DeadLetter:
    headers = message.properties.headers
    failed_at = headers.get(h.FAILED_AT)
    return DeadLetter(
        message_id=message.properties.message_id,
        code=str(headers.get(h.ERROR_CODE, "unknown"))[:64],
        reason=str(headers.get(h.ERROR_MESSAGE, ""))[:1024],
        failed_at=None if failed_at is None else str(failed_at)[:64],
        retry_count=retry_count(headers),
        size=len(message.body),
        job_key=job_key(message.properties.message_id, message.body),
        destination=_destination(message.body, production),
    )


def _destination(body: bytes, production: bool) -> str | None:
    """The job's destination as the operator may see it (a dead letter's body can be anything:
    None when it is not a job's JSON object with a text destination)."""
    try:
        job = json.loads(body)
    except ValueError:
        return None
    number = job.get("destination") if isinstance(job, dict) else None
    if not isinstance(number, str):
        return None
    return mask_phone(number[:64], production=production)


async def list_dead_letters(settings: Settings, limit: int = 100) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            while len(found) < limit:
                message = await amqp.get(channel, settings.dlq_name)
                if message is None:
                    break
                found.append(_describe(message, settings.production))
        # closing the channel returned every message to the queue
    return found


@attrs.frozen
class ReplayReport:
    replayed: int
    left: int


async def replay(
    settings: Settings,
    *,
    code: str | None = None,
    limit: int | None = None,
    message_id: str | None = None,
) -> ReplayReport:
    """Republish dead-lettered jobs (those with ``code``, or the one ``message_id``; at most
    ``limit``).

    The queue's length is read first and at most that many messages are looked at: a job that
    fails again while a worker runs comes back to the DLQ behind them and is not replayed a
    second time in the same run. ``left`` is what the DLQ still holds afterwards.
    """
    return await _take(settings, code=code, limit=limit, message_id=message_id, republish=True)


async def drop(
    settings: Settings,
    *,
    code: str | None = None,
    limit: int | None = None,
    message_id: str | None = None,
) -> ReplayReport:
    """Remove dead letters for good (those with ``code``, or the one ``message_id``; at most
    ``limit``): the console's "drop", confirmed by the operator first."""
    return await _take(settings, code=code, limit=limit, message_id=message_id, republish=False)


def _chosen(message: Delivery, code: str | None, message_id: str | None) -> bool:
    props = message.properties
    if code is not None and props.headers.get(h.ERROR_CODE) != code:
        return False
    return message_id is None or props.message_id == message_id


async def _take(
    settings: Settings,
    *,
    code: str | None,
    limit: int | None,
    message_id: str | None,
    republish: bool,
) -> ReplayReport:
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    taken = 0
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as getter, connection.open_channel() as publisher:
            waiting = await amqp.queue_message_count(getter, settings.dlq_name)
            for _ in range(waiting):
                if limit is not None and taken >= limit:
                    break
                message = await amqp.get(getter, settings.dlq_name)
                if message is None:
                    break
                if not _chosen(message, code, message_id):
                    continue  # stays unacked: back in the queue when the channel closes
                if republish:
                    await _republish(publisher, settings, message)
                await message.ack()
                taken += 1
        async with connection.open_channel() as counter:
            left = await amqp.queue_message_count(counter, settings.dlq_name)
    return ReplayReport(replayed=taken, left=left)


async def _republish(channel: Any, settings: Settings, message: Delivery) -> None:
    props = message.properties
    headers = {k: v for k, v in props.headers.items() if k not in _STRIP}
    headers["x-replayed-at"] = datetime.now(UTC).isoformat(timespec="seconds")
    await amqp.publish(
        channel,
        settings.exchange,
        settings.routing_key,
        message.body,
        attrs.evolve(props, headers=headers),
    )
