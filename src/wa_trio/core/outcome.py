"""How a job ends, decided without I/O: the ledger's verdict, what a failed send becomes, how
many jobs to take at once, which acks settle a batch, and the headers of the copies we publish.

The pipeline (``pipeline.py``) only carries these decisions out. Every table here is tested in
``tests/unit/core/test_outcome.py`` with no broker, no trio and no WhatsApp.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from wa_trio.core import headers as h
from wa_trio.core.errors import SendError
from wa_trio.core.retry import retry_delay


class Outcome(enum.Enum):
    """The end of one job (the ``status`` label of ``worker_jobs_processed_total``)."""

    SUCCESS = "success"  # WhatsApp took it; acked
    INVALID = "invalid"  # can never be sent as it is; dead-lettered
    FAILED = "failed"  # the send failed for good (or retries ran out); dead-lettered
    RETRIED = "retried"  # parked in a delay queue for the next try
    DUPLICATE = "duplicate"  # already sent (or, with WHATSAPP_AMBIGUOUS=skip, maybe sent)
    HELD = "held"  # a stop began first: left unacked, the broker redelivers it
    SCHEDULED = "scheduled"  # not due yet: parked in a wait queue (send_at)
    FORWARDED = "forwarded"  # handed to the Cloud API account (WHATSAPP_FALLBACK)

    @property
    def counted(self) -> bool:
        """Whether the job left the queue (held jobs come back, so they are not counted)."""
        return self is not Outcome.HELD


# ------------------------------------------------------------------------- the ledger's verdict


class Decision(enum.Enum):
    SEND = "send"
    DUPLICATE = "duplicate"  # already sent: ack without sending
    AMBIGUOUS_RESEND = "ambiguous_resend"  # a previous run died mid-send: send again
    AMBIGUOUS_SKIP = "ambiguous_skip"  # ... and WHATSAPP_AMBIGUOUS=skip: never twice
    CONFLICT = "conflict"  # the message_id was used before for another body
    CRASH_LOOP = "crash_loop"  # in hand at CRASH_LIMIT deaths: dead-lettered, never again


#: how many times a job may be in hand (its row ``sending``) when a worker dies before it is
#: dead-lettered ``crash_loop``: one job must never crash-loop a fleet (issue 26)
CRASH_LIMIT = 3


@attrs.frozen
class Found:
    """A ledger row as ``begin`` found it. ``deaths``: how many times before this one the row
    was found ``sending`` (a worker died holding the job)."""

    state: str
    body_hash: str | None = None
    deaths: int = 0


#: ledger states that end a job: sent, or handed to the Cloud API account (WHATSAPP_FALLBACK)
DONE = frozenset({"sent", "forwarded"})


def begin_writes(found: Found | None, body_hash: str | None) -> int | None:
    """The ledger's begin rule, one for both stores: the ``deaths`` to write with a
    ``sending`` row, or None to leave the row as it is (already ``sent``, or another body's:
    a conflict the caller dead-letters, the first body's record kept). A row found ``sending``
    is a worker that died holding the job: one death more."""
    if found is None:
        return 0
    if found.state in DONE or (found.body_hash and found.body_hash != body_hash):
        return None
    return found.deaths + 1 if found.state == "sending" else 0


def decide(found: Found | None, *, body_hash: str | None = None, ambiguous: str) -> Decision:
    """What to do with a job whose ledger row is ``found`` (None: no row, or not consulted).

    A row holding another body's hash means the publisher reused a message_id: never silently
    acked as a duplicate (rows written before hashes were kept have none and are trusted).
    """
    if found is None:
        return Decision.SEND
    if found.body_hash and found.body_hash != body_hash:
        return Decision.CONFLICT
    if found.state in DONE:
        return Decision.DUPLICATE
    if found.state == "sending":
        if found.deaths + 1 >= CRASH_LIMIT:
            return Decision.CRASH_LOOP
        return Decision.AMBIGUOUS_SKIP if ambiguous == "skip" else Decision.AMBIGUOUS_RESEND
    return Decision.SEND


# ------------------------------------------------------------------------ a failed send


@attrs.frozen
class DeadLetter:
    code: str
    message: str
    outcome: Outcome = Outcome.FAILED


@attrs.frozen
class Retry:
    delay: float
    retry: int  # the number of this retry (1 for the first)


def on_send_failure(
    error: SendError, *, ambiguous_policy: str, retries_done: int, schedule: tuple[float, ...]
) -> DeadLetter | Retry:
    """A failed send becomes a dead-letter (with its code) or the next delayed retry.

    - ambiguous (WhatsApp may have taken it) with WHATSAPP_AMBIGUOUS=skip: dead-lettered, never
      risking a second copy;
    - permanent: dead-lettered with the error's code;
    - transient: the next delay of ``schedule``, or ``retries_exhausted`` after the last; with
      a reset hint (``error.retry_after``, e.g. a rate limit's), the first later delay of
      ``schedule`` that waits at least that long (or its longest).
    """
    if error.ambiguous and ambiguous_policy == "skip":
        return DeadLetter(
            error.code, f"{error.message} (maybe sent; WHATSAPP_AMBIGUOUS=skip: not retried)"
        )
    if not error.transient:
        return DeadLetter(error.code, error.message)
    delay = retry_delay(schedule, retries_done)
    if delay is None:
        return DeadLetter(
            "retries_exhausted",
            f"gave up after {retries_done} retries; last error {error.code}: {error.message}",
        )
    hint = error.retry_after
    if hint is not None and hint > delay:
        later = [d for d in schedule[retries_done:] if d >= hint]
        delay = min(later) if later else max(schedule[retries_done:])
    return Retry(delay, retries_done + 1)


def rest_beyond_ladder(error: SendError, schedule: tuple[float, ...]) -> float | None:
    """The rest a transient failure asks for (``retry_after``) when it is longer than the
    longest delay of the retry ladder (Meta's 131049: try again in a day); None otherwise. Such
    a job waits in the wait queues (``x-not-before``) instead of spending the ladder early."""
    hint = error.retry_after
    if not error.transient or error.ambiguous or hint is None:
        return None
    return hint if hint > max(schedule, default=0.0) else None


# ------------------------------------------------------------------------ batches and acks


def batch_size(prefetch: int, *, pacing: bool) -> int:
    """How many waiting jobs the sender takes at once.

    A backlog is taken in batches (one ledger transaction per job instead of two, one ack for
    many) when pacing is off; with pacing on, sends are spaced anyway and one job at a time
    keeps a stop prompt.
    """
    return 1 if pacing else max(1, prefetch)


def defer_repeats(keys: Iterable[str]) -> tuple[list[int], list[int]]:
    """Split a batch into (first copies, later copies) by position.

    Copies of one key in one batch must not race: the first is sent, the later ones wait for
    its outcome (a later round consults the ledger again and finds it ``sent``).
    """
    seen: set[str] = set()
    first: list[int] = []
    later: list[int] = []
    for index, key in enumerate(keys):
        (later if key in seen else first).append(index)
        seen.add(key)
    return first, later


def ack_plan(sent: Iterable[int], unsettled: Iterable[int]) -> list[tuple[int, bool]]:
    """The acks (delivery tag, multiple) that settle the ``sent`` tags of a batch.

    One ``multiple`` ack covers every sent tag below the lowest tag still unsettled (held,
    not yet handled); the rest are acked one by one, so an unsettled job is never acked.
    """
    tags = sorted(sent)
    if not tags:
        return []
    floor = min(unsettled, default=None)
    covered = [tag for tag in tags if floor is None or tag < floor]
    rest = [tag for tag in tags if floor is not None and tag > floor]
    plan: list[tuple[int, bool]] = []
    if len(covered) > 1:
        plan.append((covered[-1], True))
    elif covered:
        plan.append((covered[0], False))
    plan.extend((tag, False) for tag in rest)
    return plan


# ------------------------------------------------------------------------ copies we publish


def dead_letter_headers(
    original: Mapping[str, Any],
    *,
    code: str,
    message: str,
    exchange: str,
    routing_key: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The dead-letter copy's headers: the original ones (made encodable) and why it failed."""
    clean, notes = h.encodable(original)
    clean.update(h.notes_header(notes))
    clean.update(
        {
            h.ERROR_CODE: code,
            h.ERROR_MESSAGE: message[:1024],
            h.ORIGINAL_EXCHANGE: exchange,
            h.ORIGINAL_ROUTING_KEY: routing_key,
            h.FAILED_AT: (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        }
    )
    return clean


def retry_headers(
    original: Mapping[str, Any], *, retry: int, code: str, message: str
) -> dict[str, Any]:
    """The retry copy's headers: the original ones (made encodable) and the retry count."""
    clean, notes = h.encodable(original)
    clean.update(h.notes_header(notes))
    clean.update({h.RETRY_COUNT: retry, h.LAST_ERROR_CODE: code, h.LAST_ERROR: message[:512]})
    return clean


def bare_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Only the headers wa-trio wrote (the fallback when a copy could not be published)."""
    ours = {
        h.ERROR_CODE,
        h.ERROR_MESSAGE,
        h.ORIGINAL_EXCHANGE,
        h.ORIGINAL_ROUTING_KEY,
        h.FAILED_AT,
        h.RETRY_COUNT,
        h.LAST_ERROR_CODE,
        h.LAST_ERROR,
        h.EXPIRES_AT,
    }
    kept = {key: value for key, value in headers.items() if key in ours}
    kept[h.HEADER_NOTES] = "original headers dropped: they could not be published again"
    return kept


__all__ = [
    "DeadLetter",
    "Decision",
    "Found",
    "Outcome",
    "Retry",
    "ack_plan",
    "bare_headers",
    "batch_size",
    "dead_letter_headers",
    "decide",
    "defer_repeats",
    "on_send_failure",
    "rest_beyond_ladder",
    "retry_headers",
]
