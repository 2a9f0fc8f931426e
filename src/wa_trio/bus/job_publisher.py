"""Publishing jobs (``wa-trio send``, tests, benchmarks): confirmed, persistent, routed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.bus.reconnect import keep_connected
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.retry import Backoff


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


class LivePublisher:
    """Jobs published on one connection kept open (the HTTP API's front door, issue 32): the
    topology declared once per connection, each publish confirmed by the broker. While the
    broker is away ``publish`` raises ``BrokerError`` at once; a publish the broker does not
    confirm within ``timeout`` seconds raises it too (the API answers 503, never hangs)."""

    def __init__(self, settings: Settings, *, timeout: float = 0.75) -> None:
        self.settings = settings
        self.timeout = timeout
        self._channel: amqp.Channel | None = None
        self._lock = trio.Lock()
        self._broken = trio.Event()
        self._up = trio.Event()  # set while a channel is open

    @property
    def connected(self) -> bool:
        return self._channel is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = Backoff(initial=0.5, cap=10.0)
        task_status.started()

        async def serve(connection: amqp.Connection) -> None:
            await amqp.declare_topology(connection, self.settings)
            async with connection.open_channel() as channel:
                self._channel, self._broken = channel, trio.Event()
                self._up.set()
                backoff.reset()
                try:
                    await self._broken.wait()
                finally:
                    self._channel, self._up = None, trio.Event()
                raise amqp.BrokerError("a publish failed: reconnecting")

        address = BrokerAddress.from_settings(self.settings)
        await keep_connected(address, serve, what="wa_trio:api", backoff=backoff, role="events")

    async def publish(
        self, body: bytes, message_id: str, headers: dict[str, object] | None = None
    ) -> None:
        """Publish one job, confirmed. Raises BrokerError (down, refused, or too slow: the
        whole call, a wait for a connection included, is bounded by ``timeout``)."""
        with trio.move_on_after(self.timeout) as scope:
            await self._up.wait()  # (re)connecting: wait for it, within the same bound
            channel = self._channel
            if channel is None:
                raise amqp.BrokerError("the broker is not connected")
            async with self._lock:
                try:
                    await _publish(channel, self.settings, body, message_id, headers)
                except amqp.BrokerError:
                    self._broken.set()
                    raise
        if scope.cancelled_caught:
            if self._channel is not None:  # a publish was cut: start on a fresh channel
                self._broken.set()
            raise amqp.BrokerError(f"the broker did not answer within {self.timeout:g}s")
