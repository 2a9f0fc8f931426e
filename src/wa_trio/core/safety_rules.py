"""Account-safety decisions (pure): opt-out keywords, and whether a job may go now.

- ``is_optout``: a reply that is exactly one of WHATSAPP_OPTOUT_KEYWORDS, compared without case,
  accents, surrounding spaces or trailing punctuation ("Stop", "stop!", "PARÁR" match; "stop
  sending me promos" does not: whole message only, so ordinary replies never opt anyone out).
- ``judge``: before a send, in this order: an opted-out recipient is dead-lettered
  ``opted_out``; a recipient at the unanswered limit is dead-lettered or parked
  ``unanswered_limit``; during a reach-out time lock (after WhatsApp's 463), a new contact's
  job is parked until the lock ends (``reachout_paused``) while known chats go on.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import attrs

#: how long a job over the unanswered limit waits before it is looked at again (action delay)
UNANSWERED_RECHECK = 3600.0


def normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return bare.casefold().strip().rstrip(".!?¡¿ ").strip()


def keyword_set(keywords: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize(word) for word in keywords if normalize(word))


def is_optout(text: str | None, keywords: frozenset[str]) -> bool:
    return bool(text) and len(text or "") <= 64 and normalize(text or "") in keywords


@attrs.frozen
class Verdict:
    code: str
    dead_letter: bool  # False: park the job for ``wait`` seconds and look again
    message: str
    wait: float = 0.0


def judge(
    *,
    opted_out: bool,
    unanswered: int,
    known: bool,
    limit: int | None,
    action: str,
    reachout_until: float,
    now: float,
) -> Verdict | None:
    """None: the job may be sent now."""
    if opted_out:
        return Verdict(
            "opted_out",
            True,
            "the recipient opted out (a reply matched an opt-out keyword, or `wa-trio optout add`)",
        )
    if limit is not None and unanswered >= limit:
        message = (
            f"{unanswered} messages sent to this recipient since they last wrote; "
            f"WHATSAPP_UNANSWERED_LIMIT is {limit}"
        )
        if action == "dlq":
            return Verdict("unanswered_limit", True, message)
        return Verdict("unanswered_limit", False, message, UNANSWERED_RECHECK)
    if not known and reachout_until > now:
        return Verdict(
            "reachout_paused",
            False,
            "WhatsApp time-locked reaching new contacts (error 463); sends to new contacts "
            "wait until the lock ends",
            reachout_until - now,
        )
    return None


#: Meta's messaging limits count the unique users a number messaged in a rolling 24 hours
DAILY_WINDOW = 86400.0


def over_daily_limit(
    *, limit: int | None, in_window: bool, count: int, oldest: float | None, now: float
) -> Verdict | None:
    """WHATSAPP_CLOUD_DAILY_LIMIT: a new recipient beyond ``limit`` unique users in the last
    24 hours is held (parked, never dead-lettered) until the oldest of them leaves the window;
    a recipient already in it may always be written to again (Meta counts users, not
    messages). None: it may go."""
    if limit is None or in_window or count < limit:
        return None
    frees_in = max(1.0, (oldest or now) + DAILY_WINDOW - now)
    return Verdict(
        "daily_limit",
        False,
        f"{count} unique recipients in the last 24 hours; WHATSAPP_CLOUD_DAILY_LIMIT is {limit}",
        frees_in,
    )


__all__ = [
    "DAILY_WINDOW",
    "UNANSWERED_RECHECK",
    "Verdict",
    "is_optout",
    "judge",
    "keyword_set",
    "normalize",
    "over_daily_limit",
]
