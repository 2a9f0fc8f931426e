"""What wa-trio declares on the broker, described without I/O (``amqp.declare_topology``
carries it out): the job exchange and queue, the dead-letter exchange and queue, the retry
queues (one per WHATSAPP_RETRY_DELAYS value) and the wait queues of scheduled jobs (one per
``schedule.LADDER`` hop), each with the one line that says how to fix it when the broker
already has it with other arguments.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from wa_trio.config.settings import Settings
from wa_trio.core.errors import TopologyError
from wa_trio.core.retry import delay_label
from wa_trio.core.schedule import LADDER


@attrs.frozen
class Declaration:
    kind: str  # "exchange" or "queue"
    name: str
    fix: str  # what to do when the broker has it with other arguments (406)
    exchange_type: str = "direct"
    arguments: dict[str, Any] | None = None


def wait_queue_name(settings: Settings, delay: float) -> str:
    """The delay queue where a scheduled job waits ``delay`` seconds (``schedule.LADDER``)."""
    return f"{settings.queue_name}.wait.{delay_label(delay)}"


def retry_queue_name(settings: Settings, delay: float) -> str:
    """The delay queue for ``delay``: per-queue TTL, dead-letters back to the job exchange."""
    return f"{settings.queue_name}.retry.{delay_label(delay)}"


def _named(settings: Settings, kind: str, name: str, variable: str) -> str:
    vhost = settings.rabbitmq_vhost
    delete = (
        f"rabbitmqctl delete_queue -p {vhost} {name}"
        if kind == "queue"
        else f"rabbitmqadmin --vhost={vhost} delete exchange name={name}"
    )
    return f"delete it ({delete}) so wa-trio can declare it, or set {variable} to another name"


def declarations(settings: Settings) -> list[Declaration]:
    """The exchanges and the job and dead-letter queues, in the order they are declared (then
    bound: ``bindings``; the delay queues come after, ``delay_queues``: a router forwarding to
    this queue must find it bound as early as possible)."""
    main = [
        Declaration(
            "exchange",
            settings.exchange,
            _named(settings, "exchange", settings.exchange, "WHATSAPP_EXCHANGE"),
            exchange_type=settings.exchange_type,
        ),
        Declaration(
            "exchange",
            settings.dlx,
            _named(settings, "exchange", settings.dlx, "WHATSAPP_DLX"),
            exchange_type="fanout",
        ),
        Declaration(
            "queue",
            settings.queue_name,
            _named(settings, "queue", settings.queue_name, "WHATSAPP_QUEUE_NAME"),
            arguments=queue_arguments(settings, "jobs"),
        ),
        Declaration(
            "queue",
            settings.dlq_name,
            _named(settings, "queue", settings.dlq_name, "WHATSAPP_DLQ_NAME"),
            arguments=queue_arguments(settings, "dead letters"),
        ),
    ]
    return main


def delay_queues(settings: Settings) -> list[Declaration]:
    """The retry queues, then the wait queues of scheduled jobs."""
    delays = [(retry_queue_name(settings, d), d) for d in sorted(set(settings.retry_delays))]
    delays += [(wait_queue_name(settings, d), d) for d in LADDER]
    return [_delay_queue(settings, name, delay) for name, delay in delays]


def _delay_queue(settings: Settings, name: str, delay: float) -> Declaration:
    return Declaration(
        "queue",
        name,
        f"delete it (rabbitmqctl delete_queue -p {settings.rabbitmq_vhost} {name}); it holds "
        "only jobs waiting for a retry or their time, publish them again first",
        arguments={
            "x-message-ttl": round(delay * 1000),
            "x-dead-letter-exchange": settings.exchange,
            "x-dead-letter-routing-key": settings.routing_key,
            **(queue_arguments(settings, "delay") or {}),
        },
    )


#: quorum queues: a job delivered this often without an ack goes to the DLQ (a poison message
#: the ledger's crash-loop rule did not end first; a held job returned on each reconnect of a
#: long outage counts too, hence far above RabbitMQ 4's default of 20)
DELIVERY_LIMIT = 200


def queue_arguments(settings: Settings, role: str) -> dict[str, Any] | None:
    """The arguments WHATSAPP_QUEUE_TYPE adds to a queue (None: classic, as the Go worker's).

    Quorum: the type; the job queue dead-letters to the DLX past ``DELIVERY_LIMIT``; a delay
    queue dead-letters back at least once (RabbitMQ 3.10+: needs ``reject-publish``), so a job
    whose time came is never lost between the two queues."""
    if settings.queue_type != "quorum":
        return None
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if role == "jobs":
        arguments |= {"x-delivery-limit": DELIVERY_LIMIT, "x-dead-letter-exchange": settings.dlx}
    if role == "delay":
        arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return arguments


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) "
    r"'(?P<name>[^']*)'.*?: (?P<detail>received .*)$"
)


def mismatch(reply: str, declared: Declaration) -> TopologyError:
    """The one line for a 406 on ``declared``: which argument differs, and the fix."""
    match = _INEQUIVALENT.search(reply)
    differs = f"argument {match['arg']!r} differs ({match['detail']})" if match else reply
    fix = declared.fix
    other_type = match is not None and (
        match["arg"] == "x-queue-type"
        # a quorum declaration meets a classic queue: RabbitMQ names the first argument the
        # classic one lacks, not the type
        or ("x-queue-type" in (declared.arguments or {}) and "current is none" in match["detail"])
    )
    if other_type:
        fix = (
            "a queue cannot change type. Drain it (stop the publishers, let the worker empty "
            "it, then delete it) or shovel its jobs to a queue of the new type, or set "
            "WHATSAPP_QUEUE_TYPE back to the queue's type"
        )
    return TopologyError(
        f"the broker refused {declared.kind} {declared.name!r}: it already exists with other "
        f"settings: {differs}. Fix: {fix}"
    )


def bindings(settings: Settings) -> list[tuple[str, str, str]]:
    """(queue, exchange, routing key) of each binding."""
    return [
        (settings.queue_name, settings.exchange, settings.routing_key),
        (settings.dlq_name, settings.dlx, ""),
    ]


__all__ = [
    "Declaration",
    "bindings",
    "declarations",
    "delay_queues",
    "mismatch",
    "retry_queue_name",
    "wait_queue_name",
]
