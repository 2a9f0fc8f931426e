"""consumer -> bounded memory channel -> sender; ack / retry / dead-letter.

Shape (one broker connection, owned by ``Pipeline.run``):

    consumer task --(trio memory channel, size = prefetch)--> sender task --> Transport
         |                                                        |
    consume channel (basic.qos = prefetch, manual acks) <-- acks -+-- publish channel (confirms)

- The sender takes what is waiting (``outcome.batch_size``) and takes each job through the same
  steps: validate -> ledger -> (pace) -> send -> record; a single job is a batch of one. Copies
  of one key in a batch wait for the first copy's outcome (``outcome.defer_repeats``).
- A job is acked only after WhatsApp accepted it and its ``sent`` row is committed, or after its
  dead-letter / retry copy was confirmed. The decisions are ``outcome.py``'s; this module
  carries them out.
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

from wa_trio import amqp
from wa_trio.amqp import BrokerAddress, Channel
from wa_trio.config import Settings
from wa_trio.copies import Copies
from wa_trio.envelope import ValidationError, WhatsAppEnvelope, parse_envelope
from wa_trio.errors import SendError
from wa_trio.expiry import deadline, is_expired
from wa_trio.job import Job, body_hash, job_key, retry_count, trace_id_of
from wa_trio.ledger import AsyncLedger, Begin, Mark
from wa_trio.ledger_gate import Held, LedgerGate
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.outcome import (
    Decision,
    Outcome,
    ack_plan,
    batch_size,
    decide,
    defer_repeats,
)
from wa_trio.pacing import Pacer
from wa_trio.policy import Backoff
from wa_trio.reconnect import keep_connected
from wa_trio.schedule import next_hop
from wa_trio.sender import Sender
from wa_trio.status import StatusPublisher
from wa_trio.templates import TemplateSet
from wa_trio.transport import OutgoingMessage, SendResult, Transport


@attrs.frozen
class PipelineStatistics:
    connected: bool  # the consuming connection is up
    connections: int  # successful (re)connections
    ledger_problem: str | None  # why the ledger cannot be written now (None: fine)


@attrs.define
class _Batch:
    """What a batch has done so far: ledger marks not yet committed, sends not yet acked."""

    jobs: list[Job]
    marks: list[Mark] = attrs.field(factory=list)
    sent: list[tuple[Job, OutgoingMessage, SendResult]] = attrs.field(factory=list)
    open: set[int] = attrs.field(factory=set)  # tags of jobs not yet settled
    held: set[int] = attrs.field(factory=set)  # tags left unacked (stop)

    def __attrs_post_init__(self) -> None:
        self.open = {job.tag for job in self.jobs}


def _outgoing(job: Job, envelope: WhatsAppEnvelope) -> OutgoingMessage:
    return OutgoingMessage(
        destination=envelope.destination,
        text=envelope.text_message,
        user_id=str(envelope.user_id),
        job_key=job.key,
    )


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
        self._consume_scope: trio.CancelScope | None = None
        self._connected = False
        self._connections = 0

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(self._connected, self._connections, self._gate.problem)

    @property
    def connected(self) -> bool:
        return self._connected

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
                await send_jobs.send(job)

    # -------------------------------------------------------------------------------- sender

    async def _sending_task(
        self, receive_jobs: trio.MemoryReceiveChannel[Job], publish_channel: Channel
    ) -> None:
        size = batch_size(self.settings.prefetch_count, pacing=self.pacer.enabled)
        async with receive_jobs:
            while not self.stopping:
                if not await self._sender.wait_connected():
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
                await self.handle_batch(batch, publish_channel)

    async def handle_batch(self, jobs: list[Job], publish_channel: Channel) -> None:
        """Take every job of ``jobs`` to its end (a single job is a batch of one).

        Each job: validate, one ledger transaction (the previous job's outcome and this job's
        ``sending`` row), send. The sent jobs are acked at the end, after their ``sent`` rows
        are committed, with as few acks as ``outcome.ack_plan`` allows. ``stop()`` is honoured
        between jobs: the rest are left unacked (held). A broker failure or the shutdown
        deadline propagates; what WhatsApp took is still recorded (shielded).
        """
        batch = _Batch(jobs)
        try:
            pending = jobs
            while pending:
                first, later = defer_repeats([job.key for job in pending])
                for index in first:
                    job = pending[index]
                    if self.stopping:
                        break
                    with job.action.context():
                        try:
                            outcome = await self._take(job, publish_channel, batch)
                        except Held:
                            outcome = Outcome.HELD
                    if outcome is not None:
                        self._finish(batch, job, outcome)
                pending = [] if self.stopping else [pending[index] for index in later]
            await self._settle_sent(batch)
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await self._gate.flush(batch.marks, give_up=True)
            for job in batch.jobs:
                if job.tag in batch.open:
                    job.action.finish(error)
            raise
        for job in batch.jobs:
            if job.tag in batch.open:
                self._finish(batch, job, Outcome.HELD)

    def _finish(self, batch: _Batch, job: Job, outcome: Outcome) -> None:
        batch.open.discard(job.tag)
        if outcome is Outcome.HELD:
            batch.held.add(job.tag)
        job.action.addSuccessFields(outcome=outcome.value)
        job.action.finish()
        self.metrics.observe_job(self._clock() - job.received_at)
        if outcome.counted:
            self.metrics.processed(outcome.value)

    async def _take(self, job: Job, channel: Channel, batch: _Batch) -> Outcome | None:
        """One job up to its send; its outcome, or None once sent (settled with the batch)."""
        envelope = await self._validate(job, channel)
        if envelope is None:
            return Outcome.INVALID
        message = _outgoing(job, envelope)
        if envelope.send_at is not None:
            early = await self._not_due(job, channel, envelope.send_at.timestamp())
            if early is not None:
                return early
        check = self._check(job)
        if self.pacer.enabled:
            # duplicates, conflicts and invalid jobs never spend a send slot
            if check:
                found = await self._gate.call(lambda: self._ledger.peek(job.key))
                decision = decide(found, body_hash=job.body_hash, ambiguous="resend")
                if decision in {Decision.DUPLICATE, Decision.CONFLICT}:
                    return await self._copies.not_sent(job, channel, decision)
            if not await self._sender.pace(envelope.destination):
                return Outcome.HELD  # stopping while throttled: left unacked, requeued
        if not await self._sender.wait_connected():
            return Outcome.HELD  # WhatsApp away and a stop began: no `sending` row was written
        expires = self._deadline(job, envelope)
        if is_expired(expires, time.time()):  # after pacing and any wait for WhatsApp
            return await self._copies.expired(job, channel, message.user_id, "before its send")
        marks = list(batch.marks)
        states = await self._gate.call(
            lambda: self._ledger.step(marks, [Begin(job.key, check, job.body_hash)])
        )
        del batch.marks[: len(marks)]
        decision = decide(states[0], body_hash=job.body_hash, ambiguous=self.settings.ambiguous)
        if decision is not Decision.SEND and decision is not Decision.AMBIGUOUS_RESEND:
            return await self._copies.not_sent(job, channel, decision)
        if decision is Decision.AMBIGUOUS_RESEND:
            self._copies.note_ambiguous(job, "resend")
        try:
            result = await self._sender.send(message)
        except Held:
            # never sent (WhatsApp went away again, then a stop): not ambiguous on redelivery
            batch.marks.append(Mark(job.key, "held", body_hash=job.body_hash))
            raise
        except SendError as error:
            batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
            await self._gate.flush(batch.marks)  # recorded before its copy is published and acked
            return await self._copies.failed_send(job, channel, error, message.user_id, expires)
        batch.marks.append(Mark(job.key, "sent", result.message_id, message.user_id, job.body_hash))
        batch.sent.append((job, message, result))
        return None

    async def _not_due(self, job: Job, channel: Channel, send_at: float) -> Outcome | None:
        """Park a job that is not due (``schedule.next_hop``), wait out a last sub-second in
        the worker; None when it is time to send."""
        remaining = send_at - time.time()
        if remaining > self.settings.schedule_max:
            await self._copies.dead_letter(
                job,
                channel,
                "schedule_too_far",
                f"send_at is {remaining / 86400:.1f} days ahead; WHATSAPP_SCHEDULE_MAX is "
                f"{self.settings.schedule_max / 86400:g} days",
            )
            self.metrics.failed("schedule_too_far")
            return Outcome.INVALID
        hop = next_hop(remaining)
        if hop is not None:
            return await self._copies.park(job, channel, hop)
        if remaining > 0:
            with trio.move_on_after(remaining):
                await self._stopping.wait()
            if self.stopping:
                return Outcome.HELD
        return None

    def _deadline(self, job: Job, envelope: WhatsAppEnvelope) -> float | None:
        props = job.delivery.properties
        return deadline(
            expires_at=envelope.expires_at,
            ttl_seconds=envelope.ttl_seconds,
            headers=props.headers,
            published_at=props.timestamp,
            received_at=time.time() - (self._clock() - job.received_at),
        )

    async def _settle_sent(self, batch: _Batch) -> None:
        """Commit the ``sent`` rows, publish their events, ack them, finish their actions."""
        with trio.CancelScope(shield=True):  # taken by WhatsApp: always recorded
            await self._gate.flush(batch.marks)
        if not batch.sent:
            return
        for job, message, result in batch.sent:
            self._copies.emit("sent", job, message.user_id, whatsapp_message_id=result.message_id)
        by_tag = {job.tag: job for job, _, _ in batch.sent}
        for tag, multiple in ack_plan(by_tag, (batch.open - by_tag.keys()) | batch.held):
            await by_tag[tag].delivery.ack(multiple=multiple)
        for job, _message, _result in batch.sent:
            with job.action.context():
                eliot.log_message(message_type="wa_trio:job:acked")
            self._finish(batch, job, Outcome.SUCCESS)

    async def _validate(self, job: Job, channel: Channel) -> WhatsAppEnvelope | None:
        """The envelope, or None after dead-lettering an invalid job (acked, counted)."""
        try:
            with eliot.start_action(action_type="wa_trio:job:validate"):
                return parse_envelope(
                    job.delivery.body,
                    content_filter=self.settings.content_filter,
                    templates=self.templates,
                )
        except ValidationError as error:
            await self._copies.dead_letter(job, channel, error.code, error.message)
            self.metrics.failed(error.code)
            return None

    @staticmethod
    def _check(job: Job) -> bool:
        """Consult the ledger? Always with a message_id; by body hash only for redeliveries
        and retries (two intentional identical messages are both sent)."""
        props = job.delivery.properties
        return bool(props.message_id) or job.delivery.redelivered or retry_count(props.headers) > 0


__all__ = ["Pipeline", "PipelineStatistics"]
