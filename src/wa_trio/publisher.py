"""Publishing jobs (``wa-trio send``, tests, benchmarks): confirmed, persistent, routed."""

from __future__ import annotations

import time

from wa_trio import amqp
from wa_trio.amqp import BrokerAddress, Properties
from wa_trio.config import Settings


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
