"""The broker side of a job's settling, in memory: what ``bus/amqp.publish`` and
``Delivery.ack`` call on a serena channel (``basic_publish``, ``basic_ack``), recorded in order,
so the handler and ``settle.Copies`` run unchanged without RabbitMQ (issue 29)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import eliot
import trio

from wa_trio.bus import amqp
from wa_trio.core.job import Job, body_hash, job_key


@attrs.frozen
class Published:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]


class MemoryChannel:
    """Records publishes (encoded headers as the broker would get them) and acks, in order:
    ``log`` reads ``publish <queue-or-exchange>``, ``event <status>``, ``ack <tag>``."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.acks: list[tuple[int, bool]] = []
        self.log: list[str] = []

    async def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, *, header: Any, mandatory: bool
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.published.append(Published(exchange, routing_key, body, dict(header.headers or {})))
        self.log.append(f"publish {exchange or routing_key}")

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self.acks.append((delivery_tag, multiple))
        self.log.append(f"ack {delivery_tag}")

    def acked(self, tag: int) -> bool:
        """Whether ``tag`` is acked (by itself, or by a later ``multiple`` ack)."""
        return any(t == tag or (multiple and t >= tag) for t, multiple in self.acks)


class RecordingStatus:
    """The status publisher's ``emit``, recorded into the channel's log (the order of copies,
    events and acks is what ``settle`` promises)."""

    def __init__(self, channel: MemoryChannel) -> None:
        self.events: list[dict[str, Any]] = []
        self._channel = channel

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._channel.log.append(f"event {event['status']}")


def memory_job(
    channel: MemoryChannel,
    body: bytes | dict[str, Any],
    *,
    tag: int = 1,
    message_id: str | None = None,
    redelivered: bool = False,
    headers: dict[str, Any] | None = None,
    routing_key: str = "jobs",
) -> Job:
    """A delivered job on ``channel``, as the consumer makes one."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    delivery = amqp.Delivery(
        body=raw,
        properties=amqp.Properties(headers=headers or {}, message_id=message_id),
        delivery_tag=tag,
        redelivered=redelivered,
        routing_key=routing_key,
        channel=channel,  # type: ignore[arg-type]  # what Delivery.ack uses of a channel
    )
    action = eliot.start_action(action_type="wa_trio:job", job_key=job_key(message_id, raw))
    return Job(delivery, action, trio.current_time(), job_key(message_id, raw), body_hash(raw))
