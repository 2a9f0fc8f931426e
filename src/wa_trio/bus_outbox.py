"""Events out to the broker, confirmed, never blocking the caller (status events, inbound
messages).

``put`` appends to a bounded in-memory buffer and returns; ``run`` publishes on a connection of
its own under publisher confirms and drops an event from the buffer only once the broker
confirmed it (reconnecting with backoff meanwhile). When the buffer is full (the broker away for
long), the oldest event is dropped and ``on_drop`` counts it.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

import trio

from wa_trio import amqp
from wa_trio.amqp import BrokerAddress, Properties
from wa_trio.policy import Backoff
from wa_trio.reconnect import keep_connected


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
    ) -> None:
        self.address = address
        self.exchange = exchange
        self.routing_key = routing_key
        self._what = what
        self._capacity = capacity
        self._properties_of = properties_of
        self._on_confirmed = on_confirmed
        self._on_drop = on_drop
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = trio.Event()
        self._idle = trio.Event()  # set (and replaced) each time the buffer was emptied

    def put(self, event: dict[str, Any]) -> None:
        if len(self.pending) >= self._capacity:
            self.pending.popleft()
            self._on_drop()
        self.pending.append(event)
        self._wake.set()

    async def drain(self) -> None:
        """Return once every buffered event is confirmed (the caller bounds the wait)."""
        while self.pending:
            await self._idle.wait()

    async def run(self) -> None:
        backoff = Backoff(initial=0.5, cap=30.0)

        async def serve(connection: amqp.Connection) -> None:
            async with connection.open_channel() as channel:
                backoff.reset()
                while True:
                    while self.pending:
                        event = self.pending[0]
                        await amqp.publish(
                            channel,
                            self.exchange,
                            self.routing_key,
                            json.dumps(event, ensure_ascii=False).encode(),
                            self._properties_of(event),
                            mandatory=False,
                        )
                        self.pending.popleft()  # confirmed
                        self._on_confirmed(event)
                    self._idle.set()
                    self._idle = trio.Event()
                    await self._wake.wait()
                    self._wake = trio.Event()

        await keep_connected(self.address, serve, what=self._what, backoff=backoff)


__all__ = ["BusOutbox"]
