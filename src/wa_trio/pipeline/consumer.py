"""consumer -> bounded memory channel -> sender; ack / retry / dead-letter.

Shape (one broker connection, owned by ``Pipeline.run``):

    consumer task --(trio memory channel, size = prefetch)--> sender task --> Transport
         |                                                        |
    consume channel (basic.qos = prefetch, manual acks) <-- acks -+-- publish channel (confirms)

- The sender takes what is waiting (``outcome.batch_size``) and hands the batch to
  ``handling.JobHandler``, which takes each job through the same steps: validate -> (schedule)
  -> ledger -> (pace) -> send -> record; a single job is a batch of one. Copies of one key in a
  batch wait for the first copy's outcome (``outcome.defer_repeats``).
- A job is acked only after WhatsApp accepted it and its ``sent`` row is committed, or after its
  dead-letter / retry / wait copy was confirmed.
- While the transport is not connected the sender takes no job: at most ``prefetch`` jobs wait
  unacked in the channel, nothing is requeued in a loop.
- Broker loss surfaces at once as ``BrokerError`` from the connection; ``run`` reconnects with
  capped exponential backoff and jitter. Unacked jobs are redelivered by the broker.
- A failing ledger disk holds the job in hand (health red, retried with backoff): nothing is sent
  without its ``sending`` row.
- ``stop()`` drains: the consumer stops, the sender finishes the job in hand and takes no other;
  jobs still in the channel or the batch stay unacked and go back to the queue on close.

eliot: each job is one action (``wa_trio:job``) started by the consumer and carried through the
memory channel with the job; the sender re-enters it with ``Action.context()`` so validate, send,
dead-letter and ack are its children and one job is one tree in eliot-tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import eliot
import trio

from wa_trio.account_safety import AccountSafety
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Channel
from wa_trio.bus.reconnect import keep_connected
from wa_trio.config.settings import Settings
from wa_trio.core.job import Job, body_hash, job_key, trace_id_of
from wa_trio.core.outcome import (
    batch_size,
)
from wa_trio.core.pacing import Pacer
from wa_trio.core.retry import Backoff
from wa_trio.core.templates import TemplateSet
from wa_trio.events.status import StatusPublisher
from wa_trio.log import Redactor
from wa_trio.media.fetch import MediaFetcher
from wa_trio.metrics import Metrics
from wa_trio.pipeline.handler import JobHandler
from wa_trio.pipeline.ledger_gate import LedgerGate
from wa_trio.pipeline.sender import Sender
from wa_trio.pipeline.settle import Copies
from wa_trio.stores.ledger import AsyncLedger
from wa_trio.transport import Transport


@attrs.frozen
class PipelineStatistics:
    connected: bool  # the consuming connection is up
    connections: int  # successful (re)connections
    ledger_problem: str | None  # why the ledger cannot be written now (None: fine)
    last_sent_at: float | None = None  # Unix time of the last send WhatsApp took


class Pipeline:
    """Owns the consuming connection for the worker's life (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        metrics: Metrics,
        ledger: AsyncLedger,
        status: StatusPublisher,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        templates: TemplateSet | None = None,
        safety: AccountSafety | None = None,
        media: MediaFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.templates = templates
        self.transport = transport
        self.metrics = metrics
        self.address = BrokerAddress.from_settings(settings)
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._clock = clock
        self._stopping = trio.Event()
        self._ledger = ledger
        self._gate = LedgerGate(ledger, self._stopping)
        self._copies = Copies(settings, metrics, status)
        self.pacer = Pacer(
            rate=settings.rate_limit,
            burst=settings.rate_burst,
            recipient_interval=settings.recipient_interval,
            jitter=settings.send_jitter,
        )
        self._sender = Sender(
            transport, self.pacer, metrics, Redactor(settings.production), self._stopping
        )
        self._handler = JobHandler(
            settings,
            metrics,
            ledger,
            self._gate,
            self._copies,
            self._sender,
            self.pacer,
            clock,
            self._stopping,
            templates,
            safety,
            media,
        )
        self._consume_scope: trio.CancelScope | None = None
        self.last_taken_published: float | None = None
        self._connected = False
        self._connections = 0

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(
            self._connected, self._connections, self._gate.problem, self._sender.last_sent_at
        )

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def sending(self) -> bool:
        """A send is in flight (an account is never moved to another replica then)."""
        return self._sender.in_flight

    # ----------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Begin a graceful drain (idempotent; safe from a signal-handling task)."""
        self._stopping.set()
        if self._consume_scope is not None:
            self._consume_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def set_hard_deadline(self, deadline: float) -> None:
        """The shutdown deadline (trio time): a send in flight is cancelled at it, not before."""
        self._sender.set_hard_deadline(deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, declare, consume; reconnect on broker loss until ``stop()``.

        ``task_status.started()`` fires after the first successful topology declaration (or
        at a stop before it).

        Raises:
            TopologyError: the broker refused a declaration (start-up cannot go on).
        """
        started = False

        async def serve(connection: amqp.Connection) -> None:
            nonlocal started
            await amqp.declare_topology(connection, self.settings)
            async with connection.open_channel() as publish_channel:
                self._set_connected(True)
                self.backoff.reset()
                self._connections += 1
                eliot.log_message(
                    message_type="wa_trio:amqp:connected",
                    broker=self.settings.redacted_url,
                    connections=self._connections,
                )
                if not started:
                    started = True
                    task_status.started()
                try:
                    await self._serve(connection, publish_channel)
                finally:
                    self._set_connected(False)

        await keep_connected(
            self.address,
            serve,
            what="wa_trio:amqp",
            backoff=self.backoff,
            stop=self._stopping,
            on_down=lambda: self._set_connected(False),
        )
        if not started:
            task_status.started()

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self.metrics.amqp_connected.set(1 if value else 0)

    async def _serve(self, connection: amqp.Connection, publish_channel: Channel) -> None:
        send_jobs, receive_jobs = trio.open_memory_channel[Job](self.settings.prefetch_count)
        async with (
            amqp.consume_channel(connection, prefetch=self.settings.prefetch_count) as channel,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._sending_task, receive_jobs, publish_channel)
            with trio.CancelScope() as scope:
                self._consume_scope = scope
                if self.stopping:
                    scope.cancel()
                await self._consumer(channel, send_jobs)
            self._consume_scope = None

    # ------------------------------------------------------------------------------ consumer

    async def _consumer(self, channel: Channel, send_jobs: trio.MemorySendChannel[Job]) -> None:
        async with send_jobs, amqp.consume(channel, self.settings.queue_name) as deliveries:
            async for delivery in deliveries:
                props = delivery.properties
                key = job_key(props.message_id, delivery.body)
                action = eliot.start_action(
                    action_type="wa_trio:job",
                    job_key=key,
                    message_id=props.message_id,
                    delivery_tag=delivery.delivery_tag,
                    redelivered=delivery.redelivered,
                    trace_id=trace_id_of(props.headers, props.correlation_id),
                )
                job = Job(delivery, action, self._clock(), key, body_hash(delivery.body))
                # when the job taken last was published (its AMQP timestamp; else now): the
                # oldest-job estimate (core/backlog.py)
                self.last_taken_published = float(props.timestamp or 0) or time.time()
                await send_jobs.send(job)

    # -------------------------------------------------------------------------------- sender

    async def _sending_task(
        self, receive_jobs: trio.MemoryReceiveChannel[Job], publish_channel: Channel
    ) -> None:
        size = batch_size(self.settings.prefetch_count, pacing=self.pacer.enabled)
        async with receive_jobs:
            while not self.stopping:
                # with WHATSAPP_FALLBACK a stuck account takes jobs too (the handler sends those
                # with a Cloud API form to that account; the others wait for WhatsApp in hand)
                if not await self._sender.wait_connected(or_stuck=self._handler.falls_back):
                    return
                try:
                    job = await receive_jobs.receive()
                except trio.EndOfChannel:
                    return
                batch = [job]
                while len(batch) < size:
                    try:
                        batch.append(receive_jobs.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._handler.handle_batch(batch, publish_channel)


__all__ = ["Pipeline", "PipelineStatistics"]
