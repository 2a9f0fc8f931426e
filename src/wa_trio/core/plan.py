"""One job's next step, chosen without I/O (issue 29).

The handler (``pipeline/handler.py``) is a small loop: it asks ``next_step`` what to do with
what it knows about the job (``Known``), carries the step out, writes what it learnt back into
``Known`` and asks again, until the step is an end (``End``: how the job leaves). Every branch
of the old inline handler is here, with a table test (``tests/unit/core/test_plan.py``):

    validate -> (schedule) -> (account safety) -> (media) -> (ledger peek, pace) -> connected
    -> (expired?) -> begin (the ledger's ``sending`` row) -> send -> sent / failed send
    (a stuck account with WHATSAPP_FALLBACK: ... -> (expired?) -> (peek) -> fall back)

The ambiguous policy (WHATSAPP_AMBIGUOUS) is read on both ledger paths: the peek before pacing
ends only a duplicate or a conflict (an ambiguous row is decided at ``Begin``, where a death is
counted), so a peek never spends a send slot on a job that cannot be sent.
"""

from __future__ import annotations

import attrs

from wa_trio.core.errors import SendError
from wa_trio.core.expiry import is_expired
from wa_trio.core.outcome import Decision, Found, Outcome, decide
from wa_trio.core.safety_rules import Verdict
from wa_trio.core.schedule import LADDER, next_hop


@attrs.frozen
class Rules:
    """The settings a plan reads (so a table test needs no Settings)."""

    schedule_max: float  # WHATSAPP_SCHEDULE_MAX, seconds
    ambiguous: str = "resend"  # WHATSAPP_AMBIGUOUS
    pacing: bool = False  # a pacer is on: peek the ledger before spending a send slot
    safety: bool = False  # account safety is on (verdicts for one-to-one sends)


@attrs.define
class Known:
    """What the handler has learnt about one job so far: each step's result is written back
    here (mutable: a job takes about ten steps, and a copy per step would be CPU for nothing;
    ``next_step`` only reads it)."""

    body_hash: str
    check_ledger: bool  # consult the ledger: a message_id, a redelivery or a retry
    validated: bool = False
    problem: tuple[str, str] | None = None  # the envelope's (code, message)
    group: bool = False
    send_at: float | None = None  # epoch seconds
    expires: float | None = None  # epoch seconds (``expiry.deadline``)
    has_media: bool = False
    due: bool = False  # the last sub-second before send_at was waited out
    judged: bool = False
    verdict: Verdict | None = None
    fetched: bool = False
    media_problem: tuple[str, str] | None = None  # (code, message)
    peeked: bool = False
    peek: Found | None = None
    paced: bool = False
    connected: bool = False
    fall_back: bool = False  # the account is stuck and the job goes to the Cloud API account
    begun: bool = False
    found: Found | None = None  # the row ``Begin`` found
    sent: bool = False
    send_error: SendError | None = None
    stopped: bool = False  # a stop began while the job waited: left unacked


# --------------------------------------------------------------------------- steps that act


@attrs.frozen
class Validate:
    """Parse the envelope; learn ``problem`` or ``group``, ``send_at``, ``expires``, media."""


@attrs.frozen
class Wait:
    """The last sub-second before ``send_at``, waited in the worker (a stop ends it)."""

    seconds: float


@attrs.frozen
class Judge:
    """Ask account safety about the destination."""


@attrs.frozen
class Fetch:
    """Fetch the media (or learn its problem)."""


@attrs.frozen
class Peek:
    """Read the ledger row before pacing (a duplicate must not spend a send slot)."""


@attrs.frozen
class Pace:
    """Wait for a send slot for this person (a stop ends it)."""


@attrs.frozen
class Connect:
    """Wait until the transport can send (a stop ends it)."""


@attrs.frozen
class Begin:
    """Commit the batch's marks and this job's ``sending`` row; learn the row found."""


@attrs.frozen
class Send:
    """Send; ``ambiguous``: a previous run may have sent it (noted, WHATSAPP_AMBIGUOUS=resend)."""

    ambiguous: bool = False


Action = Validate | Wait | Judge | Fetch | Peek | Pace | Connect | Begin | Send

# ------------------------------------------------------------------- how a job leaves (ends)


@attrs.frozen
class Hold:
    """A stop began first: left unacked; the broker redelivers it."""


@attrs.frozen
class DeadLetter:
    """Dead-lettered with ``code`` (counted as a failure of that code)."""

    code: str
    message: str
    outcome: Outcome = Outcome.FAILED


@attrs.frozen
class Park:
    """Not now: republished to the wait queue of ``hop`` seconds. ``held_back``: the account
    safety code that parked it (None: ``send_at`` is ahead)."""

    hop: float
    held_back: str | None = None


@attrs.frozen
class NotSent:
    """The ledger says not to send: a duplicate, a conflict, an ambiguous skip."""

    decision: Decision


@attrs.frozen
class Expired:
    """Its deadline passed before it could be sent (never sent late)."""

    why: str


@attrs.frozen
class FailedSend:
    """A failed send (or media fetch): retried later or dead-lettered (``on_send_failure``)."""

    error: SendError


@attrs.frozen
class CrashLoop:
    """In hand at ``outcome.CRASH_LIMIT`` worker deaths: dead-lettered, never tried again."""


@attrs.frozen
class Sent:
    """WhatsApp took it: recorded ``sent``, acked with its batch."""


@attrs.frozen
class FallBack:
    """The account is banned, logged out or failed and WHATSAPP_FALLBACK=cloud-api: the job
    (with its ``cloud_template``) goes to the Cloud API account's queue, once."""


End = Hold | DeadLetter | Park | NotSent | Expired | FailedSend | CrashLoop | Sent | FallBack
Step = Action | End

ENDS = (Hold, DeadLetter, Park, NotSent, Expired, FailedSend, CrashLoop, Sent, FallBack)

# the steps without fields, made once (frozen: safe to share; a job takes about six steps)
_VALIDATE, _JUDGE, _FETCH, _PEEK, _PACE = Validate(), Judge(), Fetch(), Peek(), Pace()
_CONNECT, _BEGIN, _SEND, _RESEND = Connect(), Begin(), Send(), Send(ambiguous=True)
_HOLD, _CRASH_LOOP, _SENT, _FALL_BACK = Hold(), CrashLoop(), Sent(), FallBack()


def next_step(known: Known, rules: Rules, now: float) -> Step:
    """The next step for a job of which ``known`` is known, at epoch ``now``."""
    if known.stopped:
        return _HOLD
    if not known.validated:
        return _VALIDATE
    if known.problem is not None:
        return DeadLetter(*known.problem, outcome=Outcome.INVALID)
    before = _before_send(known, rules, now)
    if before is not None:
        return before
    if not known.connected:
        return _CONNECT
    if not known.begun:
        if is_expired(known.expires, now):  # after pacing and any wait for WhatsApp
            return Expired("before its send")
        return _fallen_back(known, rules) if known.fall_back else _BEGIN
    return _after_begin(known, rules)


def _before_send(known: Known, rules: Rules, now: float) -> Step | None:
    """Schedule, account safety, media, the ledger peek and pacing: a step, or None."""
    if known.send_at is not None and not known.due:
        scheduled = not_due(known.send_at - now, rules.schedule_max)
        if scheduled is not None:
            return scheduled
    if rules.safety and not known.group:
        if not known.judged:
            return _JUDGE
        if known.verdict is not None:
            return held_back(known.verdict)
    if known.has_media:
        if not known.fetched:
            return _FETCH
        if known.media_problem is not None:
            return media_failure(*known.media_problem)
    return _paced(known, rules) if rules.pacing else None


def _paced(known: Known, rules: Rules) -> Step | None:
    """With a pacer: peek the ledger first (duplicates, conflicts and invalid jobs never spend
    a send slot), then wait for the slot."""
    if known.check_ledger and not known.peeked:
        return _PEEK
    early = decide(known.peek, body_hash=known.body_hash, ambiguous=rules.ambiguous)
    if early in {Decision.DUPLICATE, Decision.CONFLICT}:
        return NotSent(early)
    return None if known.paced else _PACE


def _fallen_back(known: Known, rules: Rules) -> Step:
    """A stuck account's job for the Cloud API account: the ledger read first (a job this
    account sent before it got stuck, redelivered since, is a duplicate, not sent twice)."""
    if known.check_ledger and not known.peeked:
        return _PEEK
    early = decide(known.peek, body_hash=known.body_hash, ambiguous=rules.ambiguous)
    if early in {Decision.DUPLICATE, Decision.CONFLICT, Decision.AMBIGUOUS_SKIP}:
        return NotSent(early)
    return _FALL_BACK


def _after_begin(known: Known, rules: Rules) -> Step:
    decision = decide(known.found, body_hash=known.body_hash, ambiguous=rules.ambiguous)
    if decision is Decision.CRASH_LOOP:
        return _CRASH_LOOP
    if decision not in {Decision.SEND, Decision.AMBIGUOUS_RESEND}:
        return NotSent(decision)
    if known.send_error is not None:
        return FailedSend(known.send_error)
    if known.sent:
        return _SENT
    return _RESEND if decision is Decision.AMBIGUOUS_RESEND else _SEND


def not_due(remaining: float, schedule_max: float) -> Step | None:
    """A job ``remaining`` seconds before its ``send_at``: dead-lettered when further ahead
    than WHATSAPP_SCHEDULE_MAX, parked (``schedule.next_hop``), or the last sub-second waited
    in the worker; None when it is time to send."""
    if remaining > schedule_max:
        return DeadLetter(
            "schedule_too_far",
            f"send_at is {remaining / 86400:.1f} days ahead; WHATSAPP_SCHEDULE_MAX is "
            f"{schedule_max / 86400:g} days",
            outcome=Outcome.INVALID,
        )
    hop = next_hop(remaining)
    if hop is not None:
        return Park(hop)
    if remaining > 0:
        return Wait(remaining)
    return None


def held_back(verdict: Verdict) -> DeadLetter | Park:
    """Account safety said no (``safety_rules.judge``): dead-lettered with its code, or
    parked and looked at again when it comes back."""
    if verdict.dead_letter:
        return DeadLetter(verdict.code, verdict.message)
    return Park(next_hop(verdict.wait) or LADDER[-1], held_back=verdict.code)


def media_failure(code: str, message: str) -> DeadLetter | FailedSend:
    """A fetch that may work later goes through the retry ladder; anything else about the
    media can never be sent as it is."""
    if code == "media_fetch_failed":
        return FailedSend(SendError(message, code=code))
    return DeadLetter(code, message, outcome=Outcome.INVALID)


__all__ = [
    "ENDS",
    "Action",
    "Begin",
    "Connect",
    "CrashLoop",
    "DeadLetter",
    "End",
    "Expired",
    "FailedSend",
    "FallBack",
    "Fetch",
    "Hold",
    "Judge",
    "Known",
    "NotSent",
    "Pace",
    "Park",
    "Peek",
    "Rules",
    "Send",
    "Sent",
    "Step",
    "Validate",
    "Wait",
    "next_step",
]
