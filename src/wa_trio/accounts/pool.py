"""The pool with several accounts (WHATSAPP_ACCOUNTS): the main queue's jobs forwarded to an
account's own queue.

Each account runs the whole pipeline on ``<WHATSAPP_QUEUE_NAME>.<account>`` (publishers may pin
a job there with routing key ``<WHATSAPP_ROUTING_KEY>.<account>``). The router consumes the main
queue and, per job, asks ``routing.route``: a job naming an ``account`` goes to it (unknown:
dead-lettered ``unknown_account``); any other goes to the connected account that rendezvous
hashing picks for its recipient. The copy is published to the exchange with the account's
routing key (confirmed, mandatory), then the original is acked: a crash in between sends a
second copy to the same account, whose ledger sees the same ``message_id`` and sends it once.
With no account connected the router waits (the job stays in the pool, unacked at most one).
A job the router cannot read goes to its hash of "" (an account's validation dead-letters it
with the real reason).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping

import attrs
import eliot
import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Channel, Delivery
from wa_trio.bus.reconnect import keep_connected
from wa_trio.config.settings import Settings
from wa_trio.core import headers as h
from wa_trio.core.outcome import dead_letter_headers
from wa_trio.core.retry import Backoff
from wa_trio.core.routing import Route, route
from wa_trio.metrics import Metrics
from wa_trio.transport import ConnectionState, Transport

WAIT_FOR_ACCOUNT = 1.0  # seconds between looks while no account is connected


def _fields(body: bytes) -> tuple[str | None, str]:
    """The job's ``account`` and ``destination`` as far as they can be read (never raises)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    named, destination = data.get("account"), data.get("destination")
    return (
        named if isinstance(named, str) else None,
        destination if isinstance(destination, str) else "",
    )


class PoolRouter:
    def __init__(
        self, settings: Settings, transports: Mapping[str, Transport], metrics: Metrics
    ) -> None:
        self.settings = settings
        self.transports = transports
        self.metrics = metrics
        self.address = BrokerAddress.from_settings(settings)
        self.forwarded: collections.Counter[str] = collections.Counter()

    def connected(self) -> list[str]:
        return [
            name
            for name, transport in self.transports.items()
            if transport.state is ConnectionState.CONNECTED
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        backoff = Backoff(initial=0.5, cap=30.0)

        async def serve(connection: amqp.Connection) -> None:
            nonlocal started
            await amqp.declare_topology(connection, self.settings)
            async with (
                amqp.consume_channel(connection, prefetch=1) as channel,
                amqp.consume(channel, self.settings.queue_name) as deliveries,
            ):
                backoff.reset()
                if not started:
                    started = True
                    task_status.started()
                async for delivery in deliveries:
                    await self._route(channel, delivery)

        await keep_connected(self.address, serve, what="wa_trio:pool", backoff=backoff)

    async def _route(self, channel: Channel, delivery: Delivery) -> None:
        named, destination = _fields(delivery.body)
        while True:
            decision = route(
                named=named,
                destination=destination,
                accounts=self.settings.accounts,
                connected=self.connected(),
            )
            if decision.account is not None or decision.code is not None:
                break
            await trio.sleep(WAIT_FOR_ACCOUNT)  # no account connected: the job waits
        if decision.code is not None:
            await self._dead_letter(channel, delivery, decision)
            return
        assert decision.account is not None
        clean, notes = h.encodable(delivery.properties.headers)
        clean.update(h.notes_header(notes))
        await amqp.publish(
            channel,
            self.settings.exchange,
            f"{self.settings.routing_key}.{decision.account}",
            delivery.body,
            attrs.evolve(delivery.properties, headers=clean),
        )
        await delivery.ack()
        self.forwarded[decision.account] += 1
        self.metrics.pool_forwarded.labels(decision.account).inc()

    async def _dead_letter(self, channel: Channel, delivery: Delivery, decision: Route) -> None:
        assert decision.code is not None
        message = "the job names an account this worker does not run"
        headers = dead_letter_headers(
            delivery.properties.headers,
            code=decision.code,
            message=message,
            exchange=self.settings.exchange,
            routing_key=delivery.routing_key,
        )
        eliot.log_message(message_type="wa_trio:pool:dead_letter", code=decision.code)
        await amqp.publish(
            channel,
            self.settings.dlx,
            delivery.routing_key,
            delivery.body,
            attrs.evolve(delivery.properties, headers=headers),
        )
        await delivery.ack()
        self.metrics.failed(decision.code)
        self.metrics.processed("invalid")


__all__ = ["PoolRouter"]
