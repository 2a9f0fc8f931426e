"""How a job leaves: ``Copies.settle(job, channel, end)`` is the one entry for every end the
plan chooses (``core/plan.py``: dead letter, park, duplicate, expired, failed send, crash loop,
hold); a sent job settles with its batch (``handler._settle_sent``, fewest acks). The order is
the same everywhere: the confirmed copy first, then the status event (durable when a webhook
outbox is on), then the ack, so a crash at any point leaves the job unacked and redelivered,
never acked without its copy or its event. A failed send is dead-lettered or parked for a retry
(``failed_send``, deciding with ``outcome.on_send_failure``). The copies of a job we publish go
to the dead-letter exchange (why it failed) or to a delay
queue (the next retry), each under publisher confirms before the original is acked, and the
status events that go with them.

A publisher's headers ride along, made encodable (``outcome.dead_letter_headers`` /
``retry_headers``); if a copy still cannot be encoded it is dead-lettered with our headers only
(``bare_headers``): a job never crashes the worker and is never lost.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import eliot

from wa_trio.bus import amqp
from wa_trio.bus.amqp import Channel, EncodeError
from wa_trio.config.settings import Settings
from wa_trio.core import headers as h
from wa_trio.core import plan
from wa_trio.core.errors import SendError
from wa_trio.core.expiry import EXPIRES_HEADER, outlives
from wa_trio.core.job import Job, retry_count
from wa_trio.core.outcome import (
    CRASH_LIMIT,
    DeadLetter,
    Decision,
    Outcome,
    Retry,
    bare_headers,
    dead_letter_headers,
    on_send_failure,
    rest_beyond_ladder,
    retry_headers,
)
from wa_trio.core.routing import pinned_key
from wa_trio.core.schedule import LADDER, next_hop
from wa_trio.events.status import StatusPublisher, make_event
from wa_trio.metrics import WORKER, Metrics


class Copies:
    def __init__(self, settings: Settings, metrics: Metrics, status: StatusPublisher) -> None:
        self._settings = settings
        self._metrics = metrics
        self._status = status

    async def settle(
        self,
        job: Job,
        channel: Channel,
        end: plan.End,
        *,
        user_id: str | None = None,
        expires: float | None = None,
    ) -> Outcome:
        """Carry out how ``job`` leaves (every end but ``Sent``, which settles with its batch)."""
        match end:
            case plan.DeadLetter(code=code, message=message, outcome=outcome):
                await self.dead_letter(job, channel, code, message, user_id)
                self._metrics.failed(code)
                return outcome
            case plan.Park(hop=hop, held_back=code):
                if code is not None:
                    eliot.log_message(message_type="wa_trio:job:held_back", code=code)
                    self._metrics.held_back.labels(code).inc()
                return await self.park(job, channel, hop)
            case plan.NotSent(decision=decision):
                return await self.not_sent(job, channel, decision)
            case plan.Expired(why=why):
                return await self.expired(job, channel, user_id, why)
            case plan.FailedSend(error=error):
                return await self.failed_send(job, channel, error, user_id or "", expires)
            case plan.CrashLoop():
                return await self.crash_loop(job, channel, user_id or "")
            case plan.Hold():
                return Outcome.HELD
        raise ValueError(f"{end!r} settles with its batch, not alone")

    def note_ambiguous(
        self,
        job: Job,
        action: str,
        note: str = "a previous run may have sent this job and died before recording it",
    ) -> None:
        self._metrics.ambiguous.labels(WORKER, action).inc()
        eliot.log_message(
            message_type="wa_trio:job:ambiguous", job_key=job.key, action=action, note=note
        )

    async def failed_send(
        self,
        job: Job,
        channel: Channel,
        error: SendError,
        user_id: str,
        expires: float | None = None,
    ) -> Outcome:
        """A failed send: dead-lettered or parked for its next retry (``on_send_failure``);
        a retry that would come back after the job's deadline (``expires``) is not scheduled:
        the job is dead-lettered ``expired``."""
        self._metrics.failed(error.code)
        done = retry_count(job.delivery.properties.headers)
        rest = rest_beyond_ladder(error, self._settings.retry_delays)
        if rest is not None:
            if outlives(expires, time.time(), rest):
                return await self.expired(job, channel, user_id, f"after {error.code}")
            # through the wait queues (like a ``send_at``), one retry counted
            retry = Retry(rest, done + 1)
            queue = amqp.wait_queue_name(self._settings, next_hop(rest) or LADDER[0])
            return await self.retry_later(
                job, channel, retry, error, user_id, expires, queue, time.time() + rest
            )
        verdict = on_send_failure(
            error,
            ambiguous_policy=self._settings.ambiguous,
            retries_done=done,
            schedule=self._settings.retry_delays,
        )
        if error.ambiguous:
            self.note_ambiguous(
                job,
                self._settings.ambiguous,
                note="WhatsApp did not answer the send in time; it may have taken the message",
            )
        if isinstance(verdict, DeadLetter):
            if verdict.code == "retries_exhausted":
                self._metrics.failed("retries_exhausted")
            await self.dead_letter(job, channel, verdict.code, verdict.message, user_id)
            return verdict.outcome
        if outlives(expires, time.time(), verdict.delay):
            return await self.expired(job, channel, user_id, f"after {error.code}")
        return await self.retry_later(job, channel, verdict, error, user_id, expires)

    async def not_sent(self, job: Job, channel: Channel, decision: Decision) -> Outcome:
        """A job the ledger says not to send: a duplicate, a conflict, an ambiguous skip."""
        if decision is Decision.CONFLICT:
            await self.dead_letter(
                job,
                channel,
                "message_id_conflict",
                "this message_id was already used for a different body; not sent",
            )
            self._metrics.failed("message_id_conflict")
            return Outcome.INVALID
        if decision is Decision.AMBIGUOUS_SKIP:
            self.note_ambiguous(job, "skip")
        else:
            eliot.log_message(message_type="wa_trio:job:duplicate", job_key=job.key)
        await job.delivery.ack()
        return Outcome.DUPLICATE

    async def crash_loop(self, job: Job, channel: Channel, user_id: str) -> Outcome:
        """A job that was in hand each time a worker died (``outcome.CRASH_LIMIT`` times):
        dead-lettered, so it cannot take the next worker down too."""
        self._metrics.failed("crash_loop")
        await self.dead_letter(
            job,
            channel,
            "crash_loop",
            f"a worker died {CRASH_LIMIT} times while this job was in hand; not tried again",
            user_id,
        )
        return Outcome.FAILED

    async def park(self, job: Job, channel: Channel, hop: float) -> Outcome:
        """A job not due yet: republished to the wait queue of ``hop`` seconds (confirmed, the
        original headers made encodable), then acked; it comes back to the job queue after."""
        clean, notes = h.encodable(job.delivery.properties.headers)
        clean.update(h.notes_header(notes))
        queue = amqp.wait_queue_name(self._settings, hop)
        with eliot.start_action(action_type="wa_trio:job:scheduled", hop=hop, queue=queue):
            if not await self._republish(job, channel, queue, clean, "headers_unencodable"):
                return Outcome.FAILED
            await job.delivery.ack()
        return Outcome.SCHEDULED

    async def _republish(
        self, job: Job, channel: Channel, queue: str, headers: dict[str, Any], code: str
    ) -> bool:
        """A copy of the job to ``queue`` (encoded first, confirmed); False when it could not
        be encoded (then it was dead-lettered with our headers only, and acked)."""
        try:
            await amqp.publish(
                channel,
                "",
                queue,
                job.delivery.body,
                attrs.evolve(job.delivery.properties, headers=headers),
                check=True,
            )
        except EncodeError as failure:
            await self._bare(job, channel, headers, code, failure)
            return False
        return True

    async def expired(self, job: Job, channel: Channel, user_id: str | None, why: str) -> Outcome:
        """Dead-letter a job whose message is no longer true (never sent late)."""
        self._metrics.failed("expired")
        await self.dead_letter(
            job, channel, "expired", f"the job expired before it could be sent ({why})", user_id
        )
        return Outcome.FAILED

    async def retry_later(
        self,
        job: Job,
        channel: Channel,
        retry: Retry,
        error: SendError,
        user_id: str,
        expires: float | None = None,
        queue: str | None = None,
        not_before: float | None = None,
    ) -> Outcome:
        """Republish to the delay queue for the next retry (confirmed), then ack; the deadline
        rides along (``x-expires-at``) so a retry never restarts a job's clock. A rest longer
        than the ladder (``rest_beyond_ladder``) goes to a wait ``queue`` with ``x-not-before``
        instead."""
        delivery = job.delivery
        headers = retry_headers(
            delivery.properties.headers, retry=retry.retry, code=error.code, message=error.message
        )
        if expires is not None:
            headers[EXPIRES_HEADER] = round(expires, 3)
        if not_before is not None:
            headers[h.NOT_BEFORE] = round(not_before, 3)
        queue = queue or amqp.retry_queue_name(self._settings, retry.delay)
        with eliot.start_action(
            action_type="wa_trio:job:retry_later",
            code=error.code,
            retry=retry.retry,
            delay=retry.delay,
            queue=queue,
        ):
            if not await self._republish(job, channel, queue, headers, error.code):
                return Outcome.FAILED
            self.emit("retrying", job, user_id, code=error.code, retry=retry.retry)
            await delivery.ack()
        self._metrics.retried()
        return Outcome.RETRIED

    async def fall_back(self, job: Job, channel: Channel) -> str:
        """A copy of the job pinned to the Cloud API account (WHATSAPP_FALLBACK), confirmed,
        marked with this account's name (``x-wa-fallback-from``: that account never falls
        back again, and its ``sent`` event names this one) and with a message_id (the job
        key: a second copy, after a crash before the ack, is a duplicate there). The account
        it went to; the caller records it and acks."""
        settings = self._settings
        to = settings.cloud_account
        assert to is not None  # Settings refuses WHATSAPP_FALLBACK without one
        props = job.delivery.properties
        headers, notes = h.encodable(props.headers)
        headers.update(h.notes_header(notes))
        headers[h.FALLBACK_FROM] = settings.account_name
        key = pinned_key(settings.routing_key, settings.account_name, to)
        copy = attrs.evolve(props, headers=headers, message_id=props.message_id or job.key)
        with eliot.start_action(action_type="wa_trio:job:fall_back", to=to):
            await amqp.publish(channel, settings.exchange, key, job.delivery.body, copy)
        return to

    def sent(self, job: Job, user_id: str, whatsapp_id: str) -> None:
        """The ``sent`` event (naming the account a WHATSAPP_FALLBACK copy came from)."""
        came_from = job.delivery.properties.headers.get(h.FALLBACK_FROM)
        extra = {"fallback_from": str(came_from)} if came_from is not None else {}
        self.emit("sent", job, user_id, whatsapp_message_id=whatsapp_id, **extra)

    def emit(self, status: str, job: Job, user_id: str | None, **fields: Any) -> None:
        self._status.emit(make_event(status, job_key=job.key, user_id=user_id, **fields))

    async def dead_letter(
        self,
        job: Job,
        channel: Channel,
        code: str,
        message: str,
        user_id: str | None = None,
    ) -> None:
        delivery = job.delivery
        headers = dead_letter_headers(
            delivery.properties.headers,
            code=code,
            message=message,
            exchange=self._settings.exchange,
            routing_key=delivery.routing_key,
        )
        with eliot.start_action(action_type="wa_trio:job:dead_letter", code=code, reason=message):
            try:
                await amqp.publish(
                    channel,
                    self._settings.dlx,
                    delivery.routing_key,
                    delivery.body,
                    attrs.evolve(delivery.properties, headers=headers),
                    check=True,
                )
            except EncodeError as failure:
                await self._bare(job, channel, headers, code, failure)
                return
            self.emit("failed", job, user_id, code=code)  # durable (webhook) before the ack
            await delivery.ack()

    async def _bare(
        self, job: Job, channel: Channel, headers: dict[str, Any], code: str, error: EncodeError
    ) -> None:
        """The fallback when a copy could not be encoded: dead-letter with our headers only."""
        eliot.log_message(message_type="wa_trio:job:headers_dropped", error=error.message)
        delivery = job.delivery
        bare = bare_headers(headers)
        bare.setdefault(h.ERROR_CODE, code)
        props = amqp.Properties(headers=bare, message_id=None)
        await amqp.publish(channel, self._settings.dlx, delivery.routing_key, delivery.body, props)
        self.emit("failed", job, None, code=code)
        await delivery.ack()
