"""Publishing jobs (``wa-trio send``, tests, benchmarks): confirmed, persistent, routed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError


async def publish_job(
    settings: Settings,
    body: bytes,
    message_id: str | None = None,
    *,
    headers: dict[str, object] | None = None,
) -> None:
    """Declare the topology (idempotent), then publish one job with publisher confirms."""
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            await _publish(channel, settings, body, message_id, headers)


async def _publish(
    channel: amqp.Channel,
    settings: Settings,
    body: bytes,
    message_id: str | None,
    headers: dict[str, object] | None = None,
) -> None:
    await amqp.publish(
        channel,
        settings.exchange,
        settings.routing_key,
        body,
        Properties(
            headers=dict(headers or {}),
            message_id=message_id,
            content_type="application/json",
            timestamp=int(time.time()),
        ),
    )


async def publish_and_watch(
    settings: Settings,
    body: bytes,
    message_id: str,
    wait_seconds: float,
    on_event: Callable[[dict[str, Any]], None],
    *,
    final: frozenset[str] | set[str] = frozenset({"read", "failed"}),
) -> list[dict[str, Any]]:
    """Publish a job, then hand each status event for it to ``on_event`` until it is read or
    failed, or ``wait_seconds`` pass. The listening queue exists before the job is published, so
    no event can be missed."""
    seen: list[dict[str, Any]] = []
    if not settings.status_routing_key:
        raise WaTrioError(
            "WHATSAPP_STATUS_ROUTING_KEY is empty: the worker sends no events",
            code="status_disabled",
        )
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            queue = await amqp.listen(channel, settings.exchange, settings.status_routing_key)
            await _publish(channel, settings, body, message_id)
            with trio.move_on_after(wait_seconds):
                while True:
                    message = await amqp.get(channel, queue, auto_ack=True)
                    if message is None:
                        await trio.sleep(0.2)
                        continue
                    event = json.loads(message.body)
                    if event.get("job_key") != message_id:
                        continue
                    seen.append(event)
                    on_event(event)
                    if event.get("status") in final:
                        break
    return seen
