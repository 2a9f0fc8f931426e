"""One batch of jobs taken to its end: validate -> (schedule) -> ledger -> (pace) -> send ->
record -> ack. A single job is a batch of one; the decisions are ``outcome.py``'s, the copies
``copies.py``'s, the send ``sender.py``'s; this module carries them out in order (see
``JobHandler.handle_batch``). ``pipeline.py`` owns the connection and feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import eliot
import trio

from wa_trio.account_safety import AccountSafety
from wa_trio.bus.amqp import BrokerError, Channel
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import ValidationError, WhatsAppEnvelope, parse_envelope
from wa_trio.core.errors import SendError, TransportError
from wa_trio.core.expiry import deadline, is_expired
from wa_trio.core.identity import person_key
from wa_trio.core.job import Job, retry_count
from wa_trio.core.media_rules import MediaPayload, MediaProblem
from wa_trio.core.outcome import (
    Decision,
    Outcome,
    ack_plan,
    decide,
    defer_repeats,
)
from wa_trio.core.pacing import Pacer
from wa_trio.core.safety_rules import Verdict
from wa_trio.core.schedule import LADDER, next_hop
from wa_trio.core.templates import TemplateSet
from wa_trio.log import log_contained
from wa_trio.media.fetch import MediaFetcher
from wa_trio.metrics import Metrics
from wa_trio.pipeline.ledger_gate import Held, LedgerGate
from wa_trio.pipeline.sender import SendAbandoned, Sender
from wa_trio.pipeline.settle import Copies
from wa_trio.stores.ledger import AsyncLedger, Begin, LedgerError, Mark
from wa_trio.transport import OutgoingMessage, SendResult

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
                    job = pending[index]
                    if self.stopping:
                        break
                    with job.action.context():
                        try:
                            outcome = await self._take(job, publish_channel, batch)
                        except Held:
                            outcome = Outcome.HELD
                        except _INFRASTRUCTURE:
                            raise
                        except Exception as error:  # noqa: BLE001 - the job's bulkhead
                            outcome = await self._contain(job, publish_channel, batch, error)
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
        if self.safety is not None and not envelope.group:
            verdict = self.safety.verdict(envelope.destination)
            if verdict is not None:
                return await self._held_back(job, channel, verdict, message.user_id)
        if envelope.media is not None:
            fetched = await self._media_of(job, channel, envelope, message.user_id)
            if isinstance(fetched, Outcome):
                return fetched
            message = attrs.evolve(message, media=fetched)
        check = self._check(job)
        if self.pacer.enabled:
            # duplicates, conflicts and invalid jobs never spend a send slot
            if check:
                found = await self._gate.call(lambda: self._ledger.peek(job.key))
                decision = decide(found, body_hash=job.body_hash, ambiguous="resend")
                if decision in {Decision.DUPLICATE, Decision.CONFLICT}:
                    return await self._copies.not_sent(job, channel, decision)
            if not await self._sender.pace(person_key(envelope.destination)):
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
        if decision is Decision.CRASH_LOOP:
            batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
            await self._gate.flush(batch.marks)
            return await self._copies.crash_loop(job, channel, message.user_id)
        if decision is not Decision.SEND and decision is not Decision.AMBIGUOUS_RESEND:
            return await self._copies.not_sent(job, channel, decision)
        if decision is Decision.AMBIGUOUS_RESEND:
            self._copies.note_ambiguous(job, "resend")
        batch.begun.add(job.tag)
        try:
            result = await self._sender.send(message)
        except Held:
            # never sent (WhatsApp went away again, then a stop): not ambiguous on redelivery
            batch.begun.discard(job.tag)
            batch.marks.append(Mark(job.key, "held", body_hash=job.body_hash))
            raise
        except SendError as error:
            batch.begun.discard(job.tag)
            if self.safety is not None:
                self.safety.after_failure(error.code)
            batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
            await self._gate.flush(batch.marks)  # recorded before its copy is published and acked
            return await self._copies.failed_send(job, channel, error, message.user_id, expires)
        batch.begun.discard(job.tag)
        batch.marks.append(Mark(job.key, "sent", result.message_id, message.user_id, job.body_hash))
        if self.safety is not None and not message.group:
            self.safety.after_send(message.destination)
        # kept until the batch is acked: without the media bytes (a batch of 100 videos)
        batch.sent.append((job, attrs.evolve(message, media=None), result))
        return None

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
            if job.tag in batch.begun:
                batch.begun.discard(job.tag)
                batch.marks.append(Mark(job.key, "failed", body_hash=job.body_hash))
                await self._gate.flush(batch.marks)
                failure = SendError(
                    f"internal error after the send began ({kind})", code="internal_error"
                )
                outcome = await self._copies.failed_send(job, channel, failure, "", None)
            else:
                await self._copies.dead_letter(
                    job, channel, "internal_error", f"the worker could not handle this job ({kind})"
                )
                self.metrics.failed("internal_error")
                outcome = Outcome.FAILED
            action.addSuccessFields(outcome=outcome.value)
        return outcome

    async def _media_of(
        self, job: Job, channel: Channel, envelope: WhatsAppEnvelope, user_id: str
    ) -> MediaPayload | Outcome:
        """The job's media bytes, or its end: a fetch that may work later goes through the
        retry ladder; anything else about the media is dead-lettered with its code."""
        assert envelope.media is not None
        try:
            if self.media is None:
                raise MediaProblem("media_unsupported", "this worker fetches no media")
            with eliot.start_action(action_type="wa_trio:job:media", kind=envelope.media.kind):
                return await self.media.payload(envelope.media)
        except MediaProblem as problem:
            if problem.code == "media_fetch_failed":
                error = SendError(problem.message, code=problem.code)
                expires = self._deadline(job, envelope)
                return await self._copies.failed_send(job, channel, error, user_id, expires)
            await self._copies.dead_letter(job, channel, problem.code, problem.message, user_id)
            self.metrics.failed(problem.code)
            return Outcome.INVALID

    async def _held_back(
        self, job: Job, channel: Channel, verdict: Verdict, user_id: str
    ) -> Outcome:
        """Account safety said no (``safety_rules.judge``): dead-lettered with its code, or
        parked in a wait queue and looked at again when it comes back."""
        if verdict.dead_letter:
            await self._copies.dead_letter(job, channel, verdict.code, verdict.message, user_id)
            self.metrics.failed(verdict.code)
            return Outcome.FAILED
        eliot.log_message(
            message_type="wa_trio:job:held_back", code=verdict.code, wait=round(verdict.wait)
        )
        self.metrics.held_back.labels(verdict.code).inc()
        return await self._copies.park(job, channel, next_hop(verdict.wait) or LADDER[-1])

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
            job.action.addSuccessFields(acked=True)  # in the job's end message: one fewer
            self._finish(batch, job, Outcome.SUCCESS)

    async def _validate(self, job: Job, channel: Channel) -> WhatsAppEnvelope | None:
        """The envelope, or None after dead-lettering an invalid job (acked, counted)."""
        try:  # no action of its own: a rejection shows as the job's dead_letter child
            return parse_envelope(
                job.delivery.body,
                content_filter=self.settings.content_filter,
                templates=self.templates,
                cloud_templates=self._sender.transport.cloud_templates,
                media_inline_max=self.settings.media_inline_max_bytes,
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


__all__ = ["JobHandler"]
