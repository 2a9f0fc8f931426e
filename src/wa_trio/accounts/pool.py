"""The pool with several accounts (WHATSAPP_ACCOUNTS): the main queue's jobs forwarded to an
account's own queue.

Each account runs the whole pipeline on ``<WHATSAPP_QUEUE_NAME>.<account>`` (publishers may pin
a job there with routing key ``<WHATSAPP_ROUTING_KEY>.<account>``). The router consumes the main
queue and, per job, asks ``routing.route``: a job naming an ``account`` goes to it (unknown:
dead-lettered ``unknown_account``); any other goes to the connected account that rendezvous
hashing picks for its recipient among those whose transport can send it (``routing.can_send``:
a Cloud API template alone only to the Cloud API account; free text to the Cloud API account
only inside the recipient's customer-service window, which the account's safety learns from
the messages the person sends). The copy is published to the exchange with the account's
routing key (confirmed, mandatory), then the original is acked: a crash in between sends a
second copy to the same account, whose ledger sees the same ``message_id`` and sends it once.
With no account of this process connected the router does not consume at all (a replica
standing by for every account leaves the pool to the replicas that hold accounts; the job in
hand when the last one went down goes back to the pool), and starts again when one connects.
A job that only accounts not connected now could send waits in hand.
A job the router cannot read goes to its hash of "" (an account's validation dead-letters it
with the real reason).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Mapping

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
from wa_trio.core.routing import Needs, Route, can_send, needs_of, route
from wa_trio.metrics import Metrics
from wa_trio.transport import ConnectionState, Transport

WAIT_FOR_ACCOUNT = 1.0  # seconds between looks while no account is connected


_CODES = {
    "unknown_account": "the job names an account this worker does not run",
    "cloud_template_unsupported": "no account of this worker sends Cloud API templates",
}

#: whether account's recipient's customer-service window is open (``AccountSafety``)
WindowOpen = Callable[[str, str], bool]


def _fields(body: bytes) -> tuple[str | None, str, Needs]:
    """The job's ``account``, ``destination`` and needs as far as they can be read (never
    raises)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "", Needs()
    if not isinstance(data, dict):
        return None, "", Needs()
    named, destination = data.get("account"), data.get("destination")
    return (
        named if isinstance(named, str) else None,
        destination if isinstance(destination, str) else "",
        needs_of(data),
    )


class PoolRouter:
    def __init__(
        self,
        settings: Settings,
        transports: Mapping[str, Transport],
        metrics: Metrics,
        window_open: WindowOpen | None = None,
    ) -> None:
        self.settings = settings
        self.transports = transports
        self.metrics = metrics
        self.window_open = window_open or (lambda _account, _destination: False)
        self.address = BrokerAddress.from_settings(settings)
        self.forwarded: collections.Counter[str] = collections.Counter()

    def any_connected(self) -> bool:
        """Whether an account of this process is connected (whatever it can send)."""
        return any(t.state is ConnectionState.CONNECTED for t in self.transports.values())

    async def _until_connected(self) -> None:
        while not self.any_connected():  # noqa: ASYNC110 - a transport's state has no event
            await trio.sleep(WAIT_FOR_ACCOUNT)

    def connected(self, needs: Needs | None = None, destination: str = "") -> list[str]:
        """The accounts connected now that can send a job of ``needs`` to ``destination``."""
        needs = needs or Needs()
        return [
            name
            for name, transport in self.transports.items()
            if transport.state is ConnectionState.CONNECTED
            and self._can(name, transport.cloud_templates, needs, destination)
        ]

    def capable(self, needs: Needs) -> list[str]:
        """The accounts configured that could send a job of ``needs`` (window open)."""
        return [
            name
            for name in self.settings.accounts
            if can_send(
                needs,
                cloud_templates=self.settings.transport_of(name) != "neonize",
                windowed=False,
                window_open=True,
            )
        ]

    def _can(self, name: str, cloud_templates: bool, needs: Needs, destination: str) -> bool:
        windowed = self.settings.transport_of(name) == "cloud-api"
        return can_send(
            needs,
            cloud_templates=cloud_templates,
            windowed=windowed,
            window_open=windowed and self.window_open(name, destination),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        backoff = Backoff(initial=0.5, cap=30.0)

        async def serve(connection: amqp.Connection) -> None:
            nonlocal started
            await amqp.declare_topology(connection, self.settings)
            backoff.reset()
            if not started:
                started = True
                task_status.started()
            while True:  # consume only while an account of this process is connected
                await self._until_connected()
                async with (
                    amqp.consume_channel(connection, prefetch=1) as channel,
                    amqp.consume(channel, self.settings.queue_name) as deliveries,
                ):
                    async for delivery in deliveries:
                        if not await self._route(channel, delivery):
                            break  # its channel closes: the job goes back to the pool

        await keep_connected(self.address, serve, what="wa_trio:pool", backoff=backoff)

    async def _route(self, channel: Channel, delivery: Delivery) -> bool:
        """Forward (or dead-letter) one job; False, leaving it unacked, when no account of
        this process is connected any more (a standby replica's, or all of them down)."""
        named, destination, needs = _fields(delivery.body)
        while True:
            decision = route(
                named=named,
                destination=destination,
                accounts=self.settings.accounts,
                connected=self.connected(needs, destination),
                capable=self.capable(needs),
            )
            if decision.account is not None or decision.code is not None:
                break
            if not self.any_connected():
                return False
            await trio.sleep(WAIT_FOR_ACCOUNT)  # none of those connected can send it: it waits
        if decision.code is not None:
            await self._dead_letter(channel, delivery, decision)
            return True
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
        return True

    async def _dead_letter(self, channel: Channel, delivery: Delivery, decision: Route) -> None:
        assert decision.code is not None
        message = _CODES[decision.code]
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
