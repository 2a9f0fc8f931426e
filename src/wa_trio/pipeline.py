"""consumer -> bounded memory channel -> sender; ack / retry / dead-letter.

Shape (one broker connection, owned by ``Pipeline.run``):

    consumer task --(trio memory channel, size = prefetch)--> sender task --> Transport
         |                                                        |
    consume channel (basic.qos = prefetch, manual acks) <-- acks -+-- publish channel (confirms)

- A job is acked only after WhatsApp accepted it, or after its dead-letter copy was confirmed.
- While the transport is not connected the sender takes no job: at most ``prefetch`` jobs wait
  unacked in the channel, nothing is requeued in a loop.
- Broker loss surfaces at once as ``BrokerError`` from the connection; ``run`` reconnects with
  capped exponential backoff and jitter. Unacked jobs are redelivered by the broker.
- ``stop()`` drains: the consumer stops, the sender finishes the job in hand and takes no other;
  jobs still in the channel stay unacked and go back to the queue when the connection closes.

eliot: each job is one action (``wa_trio:job``) started by the consumer and carried through the
memory channel with the job; the sender re-enters it with ``Action.context()`` so validate, send,
dead-letter and ack are its children and one job is one tree in eliot-tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import eliot
import trio

from wa_trio import amqp
from wa_trio.amqp import BrokerAddress, BrokerError, Delivery
from wa_trio.config import Settings
from wa_trio.envelope import ValidationError, WhatsAppEnvelope, parse_envelope
from wa_trio.errors import NotConnectedError, SendError
from wa_trio.ledger import AsyncLedger, Decision, decide
from wa_trio.log import Redactor
from wa_trio.metrics import WORKER, Metrics
from wa_trio.pacing import Pacer
from wa_trio.policy import Backoff, retry_delay
from wa_trio.status import StatusPublisher, make_event
from wa_trio.transport import OutgoingMessage, SendResult, Transport


@attrs.define
class Job:
    delivery: Delivery
    action: eliot.Action
    received_at: float
    key: str


def job_key(delivery: Delivery) -> str:
    """The job's identity: the publisher's message_id, else a hash of the body."""
    if delivery.properties.message_id:
        return delivery.properties.message_id
    return "sha256:" + hashlib.sha256(delivery.body).hexdigest()


def _outgoing(job: Job, envelope: WhatsAppEnvelope) -> OutgoingMessage:
    return OutgoingMessage(
        destination=envelope.destination,
        text=envelope.text_message,
        user_id=str(envelope.user_id),
        job_key=job.key,
    )


def trace_id_of(delivery: Delivery) -> str | None:
    trace = delivery.properties.headers.get("trace_id") or delivery.properties.correlation_id
    if isinstance(trace, bytes):
        trace = trace.decode("utf-8", "replace")
    return None if trace is None else str(trace)[:128]


def retry_count(properties: amqp.Properties) -> int:
    value = properties.headers.get("x-retry-count", 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def dead_letter_headers(
    original: dict[str, Any], code: str, message: str, delivery: Delivery, exchange: str
) -> dict[str, Any]:
    headers = dict(original)
    headers.update(
        {
            "x-error-code": code,
            "x-error-message": message[:1024],
            "x-original-exchange": exchange,
            "x-original-routing-key": delivery.routing_key,
            "x-failed-at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )
    return headers


class Pipeline:
    """Owns the consuming connection for the worker's life (see module docstring)."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        metrics: Metrics,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        ledger: AsyncLedger | None = None,
        status: StatusPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.metrics = metrics
        self.redactor = Redactor(settings.production)
        self.address = BrokerAddress.from_settings(settings)
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._clock = clock
        self.ledger = ledger
        self.status = status
        self.pacer = Pacer(
            rate=settings.rate_limit,
            burst=settings.rate_burst,
            recipient_interval=settings.recipient_interval,
            jitter=settings.send_jitter,
        )
        self._stopping = trio.Event()
        self._consume_scope: trio.CancelScope | None = None
        self.connected = False
        self.connected_event = trio.Event()
        self.topology_ready = trio.Event()  # set once the first declaration succeeded
        self.connections = 0  # successful (re)connections, for tests and logs
        self._hard_deadline = math.inf
        self._protected_scopes: set[trio.CancelScope] = set()

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
        """The shutdown deadline (trio time): protected sends are cancelled at it, not before."""
        self._hard_deadline = deadline
        for scope in self._protected_scopes:
            scope.deadline = min(scope.deadline, deadline)

    @contextlib.contextmanager
    def _protected(self) -> Iterator[None]:
        """A send in flight, shielded from a broker loss (its ``sent`` record is shielded too).

        When the consuming connection dies mid-send, the connection's nursery cancels the sender.
        Cancelled there, WhatsApp may take the message while the ledger still says ``sending``:
        a resend after reconnecting (a duplicate). Shielded, the send finishes and is recorded
        ``sent``; only the ack is lost, and the redelivered copy is acked as a duplicate. The
        shutdown deadline (``set_hard_deadline``) still cancels it. Waiting for WhatsApp to
        connect is not shielded: nothing is in flight then.
        """
        with trio.CancelScope(shield=True, deadline=self._hard_deadline) as scope:
            self._protected_scopes.add(scope)
            try:
                yield
            finally:
                self._protected_scopes.discard(scope)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, declare, consume; reconnect on broker loss until ``stop()``.

        ``task_status.started()`` fires after the first successful topology declaration.

        Raises:
            TopologyError: the broker refused a declaration (start-up cannot go on).
        """
        started = False
        while not self.stopping:
            try:
                async with amqp.connect(self.address) as connection:
                    await amqp.declare_topology(connection, self.settings)
                    self.topology_ready.set()
                    async with connection.open_channel() as publish_channel:
                        self._set_connected(True)
                        self.backoff.reset()
                        self.connections += 1
                        eliot.log_message(
                            message_type="wa_trio:amqp:connected",
                            broker=self.settings.redacted_url,
                            connections=self.connections,
                        )
                        if not started:
                            started = True
                            task_status.started()
                        await self._serve(connection, publish_channel)
            except BrokerError as error:
                self._set_connected(False)
                if self.stopping:
                    break
                delay = self.backoff.next_delay()
                eliot.log_message(
                    message_type="wa_trio:amqp:disconnected",
                    reason=str(error)[:300],
                    retry_in=round(delay, 3),
                )
                with trio.move_on_after(delay):
                    await self._stopping.wait()
            finally:
                self._set_connected(False)
        if not started:
            task_status.started()

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self.metrics.amqp_connected.set(1 if value else 0)
        if value:
            self.connected_event.set()
        elif self.connected_event.is_set():
            self.connected_event = trio.Event()

    async def _serve(self, connection: amqp.Connection, publish_channel: Any) -> None:
        send_jobs, receive_jobs = trio.open_memory_channel[Job](self.settings.prefetch_count)
        async with (
            amqp.consume_channel(connection, prefetch=self.settings.prefetch_count) as channel,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._sender, receive_jobs, publish_channel)
            with trio.CancelScope() as scope:
                self._consume_scope = scope
                if self.stopping:
                    scope.cancel()
                await self._consumer(channel, send_jobs)
            self._consume_scope = None

    # ------------------------------------------------------------------------------ consumer

    async def _consumer(self, channel: Any, send_jobs: Any) -> None:
        async with send_jobs, amqp.consume(channel, self.settings.queue_name) as deliveries:
            async for delivery in deliveries:
                key = job_key(delivery)
                action = eliot.start_action(
                    action_type="wa_trio:job",
                    job_key=key,
                    message_id=delivery.properties.message_id,
                    delivery_tag=delivery.delivery_tag,
                    redelivered=delivery.redelivered,
                    trace_id=trace_id_of(delivery),
                )
                await send_jobs.send(Job(delivery, action, self._clock(), key))

    # -------------------------------------------------------------------------------- sender

    async def _sender(self, receive_jobs: Any, publish_channel: Any) -> None:
        async with receive_jobs:
            while not self.stopping:
                await self.transport.wait_connected()
                try:
                    job = await receive_jobs.receive()
                except trio.EndOfChannel:
                    return
                if self.stopping:
                    # drained: leave it unacked, the broker requeues it on close
                    job.action.finish()
                    return
                batch = [job]
                if self.batching:
                    while len(batch) < self.settings.prefetch_count:
                        try:
                            batch.append(receive_jobs.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                if len(batch) == 1:
                    await self.handle(job, publish_channel)
                else:
                    await self.handle_batch(batch, publish_channel)

    @property
    def batching(self) -> bool:
        """Whether a backlog may be taken in batches (see ``handle_batch``)."""
        return (
            self.ledger is not None
            and not self.pacer.enabled
            and self.settings.ambiguous == "resend"
        )

    async def handle_batch(self, jobs: list[Job], publish_channel: Any) -> None:
        """A backlog: the jobs already waiting, with one ledger transaction before the sends and
        one after, instead of two per job (the ledger's thread hops dominate a drain).

        Same per-job order as ``handle``: ``sending`` committed before any send, ``sent``
        committed before any ack, sends in delivery order. Only used when pacing is off (pacing
        spaces sends anyway) and WHATSAPP_AMBIGUOUS=resend: a crash mid-batch leaves
        ``sending`` rows for jobs not yet sent, which are then resent, i.e. sent once, and
        counted as ambiguous (an over-count, never a loss). With ``skip`` they would be lost,
        so ``skip`` keeps the one-job path.
        """
        ledger = self.ledger
        assert ledger is not None
        ready: list[tuple[Job, OutgoingMessage]] = []
        open_jobs = list(jobs)
        try:
            for job in jobs:
                with job.action.context():
                    envelope = await self._validate(job, publish_channel)
                if envelope is None:
                    self._finish(job, "invalid")
                    open_jobs.remove(job)
                    continue
                ready.append((job, _outgoing(job, envelope)))
            found = await ledger.begin_many([(job.key, self._check(job)) for job, _ in ready])
            sent: list[tuple[Job, OutgoingMessage, SendResult]] = []
            try:
                for (job, message), state in zip(ready, found, strict=True):
                    with job.action.context():
                        decision = decide(state, ambiguous=self.settings.ambiguous)
                        if decision is Decision.DUPLICATE:
                            await self._ack_duplicate(job)
                            status = "duplicate"
                        else:
                            if decision is Decision.AMBIGUOUS_RESEND:
                                self._note_ambiguous(job, "resend")
                            try:
                                result = await self._send(message)
                            except SendError as error:
                                await ledger.mark(job.key, "failed")
                                status = await self._send_failed(
                                    job, publish_channel, error, message.user_id
                                )
                            else:
                                sent.append((job, message, result))
                                continue
                    self._finish(job, status)
                    open_jobs.remove(job)
            finally:
                # what WhatsApp took is recorded even if the broker failed mid-batch or
                # the shutdown deadline struck (a short SQLite commit, never abandoned)
                if sent:
                    with trio.CancelScope(shield=True):
                        await ledger.mark_many(
                            [
                                (job.key, "sent", result.message_id, message.user_id)
                                for job, message, result in sent
                            ]
                        )
            for job, message, result in sent:
                self._emit("sent", job, message.user_id, whatsapp_message_id=result.message_id)
            if sent:
                # every earlier job of this channel is settled (previous batches, and the rest
                # of this one above): one ack with multiple=True covers the sent ones
                last = max(sent, key=lambda item: item[0].delivery.delivery_tag)[0]
                await last.delivery.ack(multiple=True)
            for job, _message, _result in sent:
                with job.action.context():
                    eliot.log_message(message_type="wa_trio:job:acked", multiple=True)
                self.metrics.processed("success")
                self._finish(job, "success")
                open_jobs.remove(job)
        except BaseException as error:
            for job in open_jobs:
                job.action.finish(error)
            raise

    def _finish(self, job: Job, status: str) -> None:
        job.action.addSuccessFields(outcome=status)
        job.action.finish()
        self.metrics.observe_job(self._clock() - job.received_at)

    async def handle(self, job: Job, publish_channel: Any) -> None:
        """Take one job to its end: sent+acked, dead-lettered+acked, or nacked for retry.

        ``stop()`` never cancels this (only the consumer); the shutdown grace deadline does, and
        a broker failure inside propagates (as BrokerError) to reconnect. Either way the job stays
        unacked and is redelivered.
        """
        with job.action.context():
            try:
                status = await self._handle(job, publish_channel)
            except BaseException as error:
                job.action.finish(error)
                raise
            job.action.addSuccessFields(outcome=status)
        job.action.finish()
        self.metrics.observe_job(self._clock() - job.received_at)

    async def _handle(self, job: Job, publish_channel: Any) -> str:
        delivery = job.delivery
        envelope = await self._validate(job, publish_channel)
        if envelope is None:
            return "invalid"
        message = _outgoing(job, envelope)
        if self.pacer.enabled and not await self._pace(envelope.destination):
            return "held"  # stopping while throttled: left unacked, requeued on close
        ledger = self.ledger
        if ledger is not None:
            found = await ledger.begin(job.key, check=self._check(job))
            decision = decide(found, ambiguous=self.settings.ambiguous)
            if decision is Decision.DUPLICATE:
                await self._ack_duplicate(job)
                return "duplicate"
            if decision is not Decision.SEND:
                skip = decision is Decision.AMBIGUOUS_SKIP
                self._note_ambiguous(job, "skip" if skip else "resend")
                if skip:
                    await delivery.ack()
                    self.metrics.processed("duplicate")
                    return "duplicate"
        try:
            result = await self._send(message)
            if ledger is not None:
                with trio.CancelScope(shield=True):  # taken by WhatsApp: always recorded
                    await ledger.mark(job.key, "sent", result.message_id, message.user_id)
        except SendError as error:
            if ledger is not None:
                await ledger.mark(job.key, "failed")
            return await self._send_failed(job, publish_channel, error, message.user_id)
        self._emit("sent", job, message.user_id, whatsapp_message_id=result.message_id)
        await delivery.ack()
        eliot.log_message(message_type="wa_trio:job:acked")
        self.metrics.processed("success")
        return "success"

    async def _validate(self, job: Job, publish_channel: Any) -> WhatsAppEnvelope | None:
        """The envelope, or None after dead-lettering an invalid job (acked, counted)."""
        try:
            with eliot.start_action(action_type="wa_trio:job:validate"):
                return parse_envelope(
                    job.delivery.body, content_filter=self.settings.content_filter
                )
        except ValidationError as error:
            await self._dead_letter(job, publish_channel, error.code, error.message)
            self.metrics.processed("invalid")
            self.metrics.failed(error.code)
            return None

    @staticmethod
    def _check(job: Job) -> bool:
        """Consult the ledger? Always with a message_id; by body hash only for redeliveries
        and retries (two intentional identical messages are both sent)."""
        props = job.delivery.properties
        return bool(props.message_id) or job.delivery.redelivered or retry_count(props) > 0

    async def _ack_duplicate(self, job: Job) -> None:
        await job.delivery.ack()
        eliot.log_message(message_type="wa_trio:job:duplicate", job_key=job.key)
        self.metrics.processed("duplicate")

    def _note_ambiguous(
        self,
        job: Job,
        action: str,
        note: str = "a previous run may have sent this job and died before recording it",
    ) -> None:
        self.metrics.ambiguous.labels(WORKER, action).inc()
        eliot.log_message(
            message_type="wa_trio:job:ambiguous", job_key=job.key, action=action, note=note
        )

    async def _send_failed(
        self, job: Job, publish_channel: Any, error: SendError, user_id: str
    ) -> str:
        self.metrics.failed(error.code)
        if error.ambiguous:
            skip = self.settings.ambiguous == "skip"
            self._note_ambiguous(
                job,
                "skip" if skip else "resend",
                note="WhatsApp did not answer the send in time; it may have taken the message",
            )
            if skip:
                # never risk a second copy: park it where an operator can replay it
                message = f"{error.message} (maybe sent; WHATSAPP_AMBIGUOUS=skip: not retried)"
                await self._dead_letter(job, publish_channel, error.code, message, user_id)
                self.metrics.processed("failed")
                return "failed"
        if not error.transient:
            await self._dead_letter(job, publish_channel, error.code, error.message, user_id)
            self.metrics.processed("failed")
            return "failed"
        return await self._retry_later(job, publish_channel, error, user_id)

    async def _pace(self, destination: str) -> bool:
        """Wait as the pacing rules say; False when a stop began meanwhile."""
        now = trio.current_time()
        wait = self.pacer.reserve(now, destination)
        self.metrics.pacing_tokens.set(max(0.0, self.pacer.tokens_at(now)))
        if wait <= 0:
            return True
        self.metrics.throttled.inc(wait)
        eliot.log_message(message_type="wa_trio:job:paced", wait=round(wait, 3))
        with trio.move_on_after(wait):
            await self._stopping.wait()
        return not self.stopping

    async def _send(self, message: OutgoingMessage) -> SendResult:
        """Send, holding the job (no retry spent) while WhatsApp is not connected."""
        while True:
            await self.transport.wait_connected()
            try:
                with eliot.start_action(
                    action_type="wa_trio:job:send",
                    destination=self.redactor.phone(message.destination),
                    user_id=message.user_id,
                    transport=self.transport.name,
                ) as send_action:
                    started = time.perf_counter()
                    with self._protected():
                        result = await self.transport.send(message)
                    self.metrics.send_duration.observe(time.perf_counter() - started)
                    send_action.addSuccessFields(whatsapp_message_id=result.message_id)
                    return result
            except NotConnectedError:
                eliot.log_message(message_type="wa_trio:job:held", reason="whatsapp offline")

    async def _retry_later(
        self, job: Job, publish_channel: Any, error: SendError, user_id: str
    ) -> str:
        """Republish to the delay queue for the next retry (confirmed), then ack; or give up."""
        delivery = job.delivery
        done = retry_count(delivery.properties)
        delay = retry_delay(self.settings.retry_delays, done)
        if delay is None:
            await self._dead_letter(
                job,
                publish_channel,
                "retries_exhausted",
                f"gave up after {done} retries; last error {error.code}: {error.message}",
                user_id,
            )
            self.metrics.failed("retries_exhausted")
            self.metrics.processed("failed")
            return "failed"
        headers = dict(delivery.properties.headers)
        headers.update(
            {
                "x-retry-count": done + 1,
                "x-last-error-code": error.code,
                "x-last-error": error.message[:512],
            }
        )
        queue = amqp.retry_queue_name(self.settings, delay)
        with eliot.start_action(
            action_type="wa_trio:job:retry_later",
            code=error.code,
            retry=done + 1,
            delay=delay,
            queue=queue,
        ):
            await amqp.publish(
                publish_channel,
                "",
                queue,
                delivery.body,
                attrs.evolve(delivery.properties, headers=headers),
            )
            await delivery.ack()
        self.metrics.retried()
        self.metrics.processed("retried")
        self._emit("retrying", job, user_id, code=error.code, retry=done + 1)
        return "retried"

    def _emit(self, status: str, job: Job, user_id: str | None, **fields: Any) -> None:
        if self.status is not None:
            self.status.emit(make_event(status, job_key=job.key, user_id=user_id, **fields))

    async def _dead_letter(
        self,
        job: Job,
        publish_channel: Any,
        code: str,
        message: str,
        user_id: str | None = None,
    ) -> None:
        delivery = job.delivery
        props = delivery.properties
        headers = dead_letter_headers(
            dict(props.headers), code, message, delivery, self.settings.exchange
        )
        with eliot.start_action(action_type="wa_trio:job:dead_letter", code=code, reason=message):
            await amqp.publish(
                publish_channel,
                self.settings.dlx,
                delivery.routing_key,
                delivery.body,
                attrs.evolve(props, headers=headers),
            )
            await delivery.ack()
        self._emit("failed", job, user_id, code=code)


__all__ = ["Job", "Pipeline", "dead_letter_headers", "job_key", "trace_id_of"]
