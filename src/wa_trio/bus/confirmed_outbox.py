"""Events out to the broker, confirmed, never blocking the caller (status events, inbound
messages).

``put`` appends to a bounded in-memory buffer and returns; ``run`` publishes on a connection of
its own under publisher confirms and drops an event from the buffer only once the broker
confirmed it (reconnecting with backoff meanwhile). When the buffer is full (the broker away for
long), the oldest event is dropped and ``on_drop`` counts it.

Confirms are pipelined: our AMQP client waits for each confirm before the next publish on a
channel, so a backlog goes out as windows of up to ``WINDOW`` events over ``LANES`` channels at
once, an event's lane chosen by its ``key`` (the events of one job keep their order). A window
leaves the buffer once every event in it is confirmed; if the connection dies first, the whole
window goes again after the reconnect (at least once: consumers de-duplicate on the AMQP
``message_id``, docs/status-events.md).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import eliot
import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.bus.reconnect import keep_connected
from wa_trio.core.retry import Backoff

LANES = 8  # channels publishing at once
WINDOW = 256  # events in flight at most


class BusOutbox:
    def __init__(
        self,
        address: BrokerAddress,
        exchange: str,
        routing_key: str,
        *,
        what: str,
        capacity: int,
        properties_of: Callable[[dict[str, Any]], Properties],
        on_confirmed: Callable[[dict[str, Any]], None],
        on_drop: Callable[[], None],
        key: Callable[[dict[str, Any]], str] = lambda _event: "",
        lanes: int = LANES,
    ) -> None:
        self._key = key
        self._lanes = lanes
        self._seq = 0
        self.address = address
        self.exchange = exchange
        self.routing_key = routing_key
        self._what = what
        self._capacity = capacity
        self._properties_of = properties_of
        self._on_confirmed = on_confirmed
        self._on_drop = on_drop
        self._queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._wake = trio.Event()
        self._idle = trio.Event()  # set (and replaced) each time the buffer was emptied

    @property
    def pending(self) -> list[dict[str, Any]]:
        """The events not yet confirmed, oldest first."""
        return [event for _, event in self._queue]

    def __len__(self) -> int:
        return len(self._queue)

    def oldest(self) -> dict[str, Any] | None:
        return self._queue[0][1] if self._queue else None

    def put(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            self._on_drop()
        self._seq += 1
        self._queue.append((self._seq, event))
        self._wake.set()

    async def drain(self) -> None:
        """Return once every buffered event is confirmed (the caller bounds the wait)."""
        while self._queue:
            await self._idle.wait()

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)

        async def serve(connection: amqp.Connection) -> None:
            async with contextlib.AsyncExitStack() as stack:
                channels = [
                    await stack.enter_async_context(connection.open_channel())
                    for _ in range(self._lanes)
                ]
                backoff.reset()
                while True:
                    while self._queue:
                        await self._publish_window(channels)
                    self._idle.set()
                    self._idle = trio.Event()
                    await self._wake.wait()
                    self._wake = trio.Event()

        await keep_connected(self.address, serve, what=self._what, backoff=backoff, role="events")

    async def _publish_window(self, channels: list[amqp.Channel]) -> None:
        """Publish the oldest ``WINDOW`` events over the lanes; drop them once all confirmed."""
        window = list(itertools.islice(self._queue, WINDOW))
        if len(window) == 1:  # the common case when events trickle in: no task to spawn
            await self._publish_lane(channels[0], [window[0][1]])
        else:
            lanes: list[list[dict[str, Any]]] = [[] for _ in channels]
            for _, event in window:
                lanes[hash(self._key(event)) % len(channels)].append(event)
            async with trio.open_nursery() as nursery:
                for channel, lane in zip(channels, lanes, strict=True):
                    if lane:
                        nursery.start_soon(self._publish_lane, channel, lane)
        last = window[-1][0]
        while self._queue and self._queue[0][0] <= last:  # some may have been dropped meanwhile
            _, event = self._queue.popleft()
            self._on_confirmed(event)

    async def _publish_lane(self, channel: amqp.Channel, events: list[dict[str, Any]]) -> None:
        for event in events:
            try:
                await amqp.publish(
                    channel,
                    self.exchange,
                    self.routing_key,
                    encoded(event),
                    self._properties_of(event),
                    mandatory=False,
                )
            except amqp.EncodeError as error:  # one event our client cannot encode: not the rest
                eliot.log_message(
                    message_type=f"{self._what}:unpublishable", error=error.message[:200]
                )


def encoded(event: dict[str, Any]) -> bytes:
    """The event as UTF-8 JSON; a string that cannot be UTF-8 (a lone surrogate a peer sent
    as ``\\ud800``) is kept as JSON's own escape instead of failing the publish."""
    try:
        return json.dumps(event, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(event).encode()


__all__ = ["LANES", "WINDOW", "BusOutbox"]
