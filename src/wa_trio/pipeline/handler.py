"""One batch of jobs taken to its end. A single job is a batch of one. Each job is a small
loop: ``core/plan.next_step`` chooses the step from what is known, this module carries it out
and writes back what it learnt; the plan's end goes to ``settle.Copies.settle`` (or, sent, is
acked with the batch, fewest acks: ``outcome.ack_plan``). The send itself is ``sender.py``'s;
``consumer.py`` owns the connection and feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import eliot
import trio

from wa_trio.account_safety import AccountSafety
from wa_trio.bus.amqp import BrokerError, Channel
from wa_trio.config.settings import Settings
from wa_trio.core import plan
from wa_trio.core.envelope import ValidationError, WhatsAppEnvelope, parse_envelope
from wa_trio.core.errors import SendError, TransportError
from wa_trio.core.expiry import deadline
from wa_trio.core.identity import person_key
from wa_trio.core.job import Job, earliest, retry_count
from wa_trio.core.media_rules import MediaProblem
from wa_trio.core.outcome import Outcome, ack_plan, defer_repeats
from wa_trio.core.pacing import Pacer
from wa_trio.core.plan import Known, Rules, next_step
from wa_trio.core.templates import TemplateSet
from wa_trio.log import log_contained
from wa_trio.media.fetch import MediaFetcher
from wa_trio.metrics import Metrics
from wa_trio.pipeline.ledger_gate import Held, LedgerGate
from wa_trio.pipeline.sender import SendAbandoned, Sender
from wa_trio.pipeline.settle import Copies
from wa_trio.stores.ledger import AsyncLedger, Begin, LedgerError, Mark
from wa_trio.transport import OutgoingMessage, SendResult
from wa_trio.transport.states import STUCK

#: failures of what the worker stands on, not of a job: they propagate (reconnect, hold, fence,
#: exit) instead of being pinned on the job in hand
_INFRASTRUCTURE = (BrokerError, TransportError, LedgerError, SendAbandoned)


@attrs.define
class _Batch:
    """What a batch has done so far: ledger marks not yet committed, sends not yet acked."""

    jobs: list[Job]
    marks: list[Mark] = attrs.field(factory=list)
    sent: list[tuple[Job, OutgoingMessage, SendResult]] = attrs.field(factory=list)
    open: set[int] = attrs.field(factory=set)  # tags of jobs not yet settled
    held: set[int] = attrs.field(factory=set)  # tags left unacked (stop)
    begun: set[int] = attrs.field(factory=set)  # tags whose `sending` row is written, unsent

    def __attrs_post_init__(self) -> None:
        self.open = {job.tag for job in self.jobs}


@attrs.define
class _InHand:
    """One job being taken: what the plan knows, and what only the handler holds."""

    job: Job
    known: Known
    envelope: WhatsAppEnvelope | None = None
    message: OutgoingMessage | None = None

    @property
    def out(self) -> OutgoingMessage:
        """The message to send (the plan asks for no step that needs it before validation)."""
        assert self.message is not None
        return self.message


def _outgoing(job: Job, envelope: WhatsAppEnvelope) -> OutgoingMessage:
    return OutgoingMessage(
        destination=envelope.destination,
        text=envelope.text_message,
        user_id=str(envelope.user_id),
        job_key=job.key,
        cloud_template=envelope.cloud_template,
    )


class JobHandler:
    """Takes batches of jobs to their end (see ``handle_batch``)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        ledger: AsyncLedger,
        gate: LedgerGate,
        copies: Copies,
        sender: Sender,
        pacer: Pacer,
        clock: Callable[[], float],
        stopping: trio.Event,
        templates: TemplateSet | None,
        safety: AccountSafety | None = None,
        media: MediaFetcher | None = None,
    ) -> None:
        self.safety = safety
        self.media = media
        self.settings = settings
        self.metrics = metrics
        self._ledger = ledger
        self._gate = gate
        self._copies = copies
        self._sender = sender
        self.pacer = pacer
        self._clock = clock
        self._stopping = stopping
        self.templates = templates
        #: a neonize account of a process with WHATSAPP_FALLBACK=cloud-api
        self.falls_back = settings.fallback == "cloud-api" and settings.transport == "neonize"
        self._rules = Rules(
            schedule_max=settings.schedule_max,
            ambiguous=settings.ambiguous,
            pacing=pacer.enabled,
            safety=safety is not None,
        )
        self._steps: dict[type, Callable[[_InHand, Any, _Batch], Awaitable[None]]] = {
            plan.Validate: self._validate,
            plan.Wait: self._wait,
            plan.Judge: self._judge,
            plan.Fetch: self._fetch,
            plan.Peek: self._peek,
            plan.Pace: self._pace,
            plan.Connect: self._connect,
            plan.Begin: self._begin,
            plan.Send: self._send,
        }

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

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
                    if self.stopping:
                        break
                    await self._one(pending[index], publish_channel, batch)
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

    async def _one(self, job: Job, channel: Channel, batch: _Batch) -> None:
        """One job of a batch inside its bulkhead (``_contain``)."""
        with job.action.context():
            try:
                outcome = await self._take(job, channel, batch)
            except Held:
                outcome = Outcome.HELD
            except _INFRASTRUCTURE:
                raise
            except Exception as error:  # noqa: BLE001 - the job's bulkhead
                outcome = await self._contain(job, channel, batch, error)
        if outcome is not None:
            self._finish(batch, job, outcome)

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
        """One job up to its send: ask the plan, carry out its step, write back what was
        learnt, until the plan says how the job leaves. Its outcome, or None once sent
        (settled with the batch)."""
        hand = _InHand(job, Known(job.body_hash, check_ledger=self._check(job)))
        while True:
            step = next_step(hand.known, self._rules, time.time())
            if isinstance(step, plan.ENDS):
                return await self._end(hand, channel, batch, step)
            await self._act(hand, step, batch)

    async def _act(self, hand: _InHand, step: plan.Action, batch: _Batch) -> None:
        """Carry out one step (a flat table by the step's type: no chain of checks)."""
        await self._steps[type(step)](hand, step, batch)

    async def _wait(self, hand: _InHand, step: plan.Wait, _batch: _Batch) -> None:
        with trio.move_on_after(step.seconds):
            await self._stopping.wait()
        hand.known.due, hand.known.stopped = True, self.stopping

    async def _judge(self, hand: _InHand, _step: plan.Judge, _batch: _Batch) -> None:
        assert self.safety is not None
        hand.known.judged = True
        hand.known.verdict = self.safety.verdict(hand.out.destination)

    async def _peek(self, hand: _InHand, _step: plan.Peek, _batch: _Batch) -> None:
        key = hand.job.key
        hand.known.peek = await self._gate.call(lambda: self._ledger.peek(key))
        hand.known.peeked = True

    async def _pace(self, hand: _InHand, _step: plan.Pace, _batch: _Batch) -> None:
        hand.known.paced = True
        hand.known.stopped = not await self._sender.pace(person_key(hand.out.destination))

    async def _connect(self, hand: _InHand, _step: plan.Connect, _batch: _Batch) -> None:
        """Wait for WhatsApp; with WHATSAPP_FALLBACK, a job that has a Cloud API form stops
        waiting when the account is stuck (banned, logged out, failed) and falls back."""
        known, envelope = hand.known, hand.envelope
        may = self.falls_back and envelope is not None and envelope.cloud_template is not None
        known.connected = True
        known.stopped = not await self._sender.wait_connected(or_stuck=may)
        known.fall_back = may and self._sender.transport.state in STUCK

    async def _end(
        self, hand: _InHand, channel: Channel, batch: _Batch, end: plan.End
    ) -> Outcome | None:
        """How the job leaves; None for a sent job (settled with its batch)."""
        job = hand.job
        if isinstance(end, plan.Sent):
            return None
        if isinstance(end, plan.FallBack):  # the copy, its record, then the ack
            to = await self._copies.fall_back(job, channel)
            batch.marks.append(Mark(job.key, "forwarded", to, body_hash=job.body_hash))
            await self._gate.flush(batch.marks)
            await job.delivery.ack()
            return Outcome.FORWARDED
        if isinstance(end, plan.CrashLoop):
            batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
            await self._gate.flush(batch.marks)
        user_id = None if hand.message is None else hand.message.user_id
        return await self._copies.settle(
            job, channel, end, user_id=user_id, expires=hand.known.expires
        )

    async def _validate(self, hand: _InHand, _step: plan.Validate, _batch: _Batch) -> None:
        """The envelope (no action of its own: a rejection shows as the job's dead_letter
        child), and what the plan needs of it."""
        known, job = hand.known, hand.job
        known.validated = True
        try:
            envelope = parse_envelope(
                job.delivery.body,
                content_filter=self.settings.content_filter,
                templates=self.templates,
                cloud_templates=self._sender.transport.cloud_templates,
                media_inline_max=self.settings.media_inline_max_bytes,
            )
        except ValidationError as error:
            known.problem = (error.code, error.message)
            return
        hand.envelope = envelope
        hand.message = _outgoing(job, envelope)
        known.group = envelope.group
        at = envelope.send_at.timestamp() if envelope.send_at is not None else None
        known.send_at = earliest(job.delivery.properties.headers, at)
        known.expires = self._deadline(job, envelope)
        known.has_media = envelope.media is not None

    async def _fetch(self, hand: _InHand, _step: plan.Fetch, _batch: _Batch) -> None:
        """The job's media bytes into its message, or the problem with them."""
        media = hand.envelope.media if hand.envelope is not None else None
        assert media is not None
        hand.known.fetched = True
        try:
            if self.media is None:
                raise MediaProblem("media_unsupported", "this worker fetches no media")
            with eliot.start_action(action_type="wa_trio:job:media", kind=media.kind):
                payload = await self.media.payload(media)
        except MediaProblem as problem:
            hand.known.media_problem = (problem.code, problem.message)
            return
        hand.message = attrs.evolve(hand.out, media=payload)

    async def _begin(self, hand: _InHand, _step: plan.Begin, batch: _Batch) -> None:
        """One ledger transaction: the batch's pending marks and this job's ``sending`` row."""
        job = hand.job
        marks = list(batch.marks)
        begin = Begin(job.key, hand.known.check_ledger, job.body_hash)
        states = await self._gate.call(lambda: self._ledger.step(marks, [begin]))
        del batch.marks[: len(marks)]
        hand.known.begun, hand.known.found = True, states[0]

    async def _send(self, hand: _InHand, step: plan.Send, batch: _Batch) -> None:
        """The send, and its ledger mark: ``sent`` is committed with the batch; ``failed`` is
        committed now (before its copy is published and acked); ``held`` (never sent: not
        ambiguous on redelivery)."""
        job, message = hand.job, hand.out
        if step.ambiguous:
            self._copies.note_ambiguous(job, "resend")
        batch.begun.add(job.tag)
        try:
            result = await self._sender.send(message)
        except Held:  # WhatsApp went away again, then a stop
            batch.begun.discard(job.tag)
            hand.known.stopped = True
            batch.marks.append(Mark(job.key, "held", body_hash=job.body_hash))
            return
        except SendError as error:
            batch.begun.discard(job.tag)
            if self.safety is not None:
                self.safety.after_failure(error.code, message.destination)
            hand.known.send_error = error
            batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
            await self._gate.flush(batch.marks)
            return
        batch.begun.discard(job.tag)  # an unexpected error leaves it begun: see _contain
        hand.known.sent = True
        batch.marks.append(Mark(job.key, "sent", result.message_id, message.user_id, job.body_hash))
        if self.safety is not None and not message.group:
            self.safety.after_send(message.destination)
        # kept until the batch is acked: without the media bytes (a batch of 100 videos)
        batch.sent.append((job, attrs.evolve(message, media=None), result))

    async def _contain(
        self, job: Job, channel: Channel, batch: _Batch, error: Exception
    ) -> Outcome:
        """The bulkhead: whatever a job's handling raised that is not a broker loss, a stop or
        a cancel ends here, once. Before its ``sending`` row: dead-lettered ``internal_error``
        (the exception's type in ``x-error-reason``). After it: WhatsApp may have taken it, so
        it is an ambiguous failed send and WHATSAPP_AMBIGUOUS decides (``on_send_failure``)."""
        kind = type(error).__name__
        self.metrics.contained.labels("job").inc()
        with eliot.start_action(action_type="wa_trio:job:contained", exception=kind) as action:
            log_contained("wa_trio:job:traceback", error)
            end: plan.End = plan.DeadLetter(
                "internal_error", f"the worker could not handle this job ({kind})"
            )
            if job.tag in batch.begun:
                batch.begun.discard(job.tag)
                batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
                await self._gate.flush(batch.marks)
                why = f"internal error after the send began ({kind})"
                end = plan.FailedSend(SendError(why, code="internal_error"))
            # no user id known here: a dead letter's event says None, a failed send's "" (as before)
            outcome = await self._copies.settle(job, channel, end)
            action.addSuccessFields(outcome=outcome.value)
        return outcome

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
            self._copies.sent(job, message.user_id, result.message_id)
        by_tag = {job.tag: job for job, _, _ in batch.sent}
        for tag, multiple in ack_plan(by_tag, (batch.open - by_tag.keys()) | batch.held):
            await by_tag[tag].delivery.ack(multiple=multiple)
        for job, _message, _result in batch.sent:
            job.action.addSuccessFields(acked=True)  # in the job's end message: one fewer
            self._finish(batch, job, Outcome.SUCCESS)

    @staticmethod
    def _check(job: Job) -> bool:
        """Consult the ledger? Always with a message_id; by body hash only for redeliveries
        and retries (two intentional identical messages are both sent)."""
        props = job.delivery.properties
        return bool(props.message_id) or job.delivery.redelivered or retry_count(props.headers) > 0


__all__ = ["JobHandler"]
