"""Retries (pure): the jittered backoff every reconnect loop uses, how a WhatsApp send error is
classified (code, transient?), and the job's retry ladder (WHATSAPP_RETRY_DELAYS).

Nothing here sleeps: callers ask for a delay and wait in their own nursery.
"""

from __future__ import annotations

import random
import re

import attrs


@attrs.define
class Backoff:
    """Capped exponential backoff with full jitter (pure; the caller sleeps).

    ``next_delay()`` returns a delay drawn from ``[base/2, base]`` where ``base`` doubles from
    ``initial`` up to ``cap``; ``reset()`` after a success. Jitter keeps a fleet of workers from
    reconnecting in lockstep after a broker restart.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        delay = self.delay_for(self.attempts)
        self.attempts += 1
        return delay

    def delay_for(self, attempt: int) -> float:
        """The jittered delay before retry number ``attempt + 1`` (for callers that keep the
        attempt count themselves, e.g. in a durable outbox)."""
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base / 2 + self.rng.random() * base / 2

    def reset(self) -> None:
        self.attempts = 0


# whatsmeow gave up waiting for the server's answer (ErrMessageTimedOut), or the socket went
# away before it came: WhatsApp may or may not have taken the message. A retry sends it under a
# new message id (neonize cannot reuse one), so the recipient would see it twice.
_AMBIGUOUS = re.compile(
    r"timed out waiting for message send response|disconnected before", re.IGNORECASE
)
AMBIGUOUS_CODES = frozenset({"send_timed_out"})
_TRANSIENT = re.compile(
    r"not connected|websocket|timed? ?out|deadline|connection|EOF|broken pipe|reset by peer|"
    r"server returned error 5\d\d|\b5\d\d\b|429|rate.?limit|try again|unavailable",
    re.IGNORECASE,
)
_REACHOUT = re.compile(r"server returned error 463\b|reach-?out.?time-?lock", re.IGNORECASE)
_PERMANENT = re.compile(
    r"not on whatsapp|no such user|invalid jid|item-not-found|\b40[0346]\b|forbidden|"
    r"not-authorized|blocked|too long|not-acceptable",
    re.IGNORECASE,
)


def classify_send_error(text: str) -> tuple[str, bool]:
    """(error code, transient?) for a WhatsApp send error text.

    Unknown errors are transient: a retry costs little and the retry limit dead-letters them in
    the end, while wrongly calling an error permanent would drop a message that could have gone.
    Codes in ``AMBIGUOUS_CODES`` mean the message may have gone out: retried only under
    WHATSAPP_AMBIGUOUS=resend.
    """
    if _REACHOUT.search(text):
        # only the recipient can lift it (by writing to us): retrying burns the account's
        # standing (go-whatsapp-web-multidevice removed its retry, #708)
        return "reachout_timelocked", False
    if _AMBIGUOUS.search(text):
        return "send_timed_out", True  # in AMBIGUOUS_CODES: WHATSAPP_AMBIGUOUS decides
    if _TRANSIENT.search(text):
        return "whatsapp_unavailable", True
    if _PERMANENT.search(text):
        return "send_rejected", False
    return "send_failed", True


def retry_delay(schedule: tuple[float, ...], retries_done: int) -> float | None:
    """Delay before retry number ``retries_done + 1``, or None when the schedule is spent."""
    if retries_done < 0:
        retries_done = 0
    if retries_done >= len(schedule):
        return None
    return schedule[retries_done]


def delay_label(seconds: float) -> str:
    """A stable queue-name suffix for a delay: 5 -> '5s', 0.25 -> '250ms'."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
