"""Pacing against bans (pure: times in, delays out; no trio, no clock of its own).

Three rules, all applied to every send from the account:

- an account-wide token bucket: WHATSAPP_RATE_LIMIT tokens per period, at most
  WHATSAPP_RATE_BURST saved up. Over any window of T seconds at most ``burst + rate * T`` sends
  go out, so no 60 s window ever holds more than limit + burst;
- a minimum interval between two sends to the same recipient (WHATSAPP_RECIPIENT_INTERVAL);
- a random jitter in [0, WHATSAPP_SEND_JITTER) added to each wait, so sends do not tick like a
  metronome.

The sender is one task, so reservations are made in order; ``reserve`` returns how long to wait
and books the token at that moment. Why these defaults: docs/account-safety.md.
"""

from __future__ import annotations

import random

import attrs


@attrs.define
class Pacer:
    rate: float | None  # tokens per second; None: no account-wide limit
    burst: int = 1
    recipient_interval: float = 0.0
    jitter: float = 0.0
    rng: random.Random = attrs.field(factory=random.Random)
    tokens: float = attrs.field(init=False)
    last: float | None = attrs.field(init=False, default=None)
    recipients: dict[str, float] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)

    @property
    def enabled(self) -> bool:
        return self.rate is not None or self.recipient_interval > 0 or self.jitter > 0

    def tokens_at(self, when: float) -> float:
        if self.rate is None:
            return float(self.burst)
        if self.last is None:
            return self.tokens
        return min(float(self.burst), self.tokens + (when - self.last) * self.rate)

    def reserve(self, now: float, recipient: str) -> float:
        """Book a send to ``recipient``; return the seconds to wait from ``now`` (>= 0)."""
        at = now
        if self.last is not None:
            at = max(at, self.last)  # reservations are in order
        if self.rate is not None:
            missing = 1.0 - self.tokens_at(at)
            if missing > 0:
                at += missing / self.rate
        previous = self.recipients.get(recipient)
        if previous is not None and self.recipient_interval > 0:
            at = max(at, previous + self.recipient_interval)
        if self.jitter > 0:
            at += self.rng.random() * self.jitter
        if self.rate is not None:
            self.tokens = self.tokens_at(at) - 1.0
        self.last = at
        self.recipients[recipient] = at
        self._forget_old(at)
        wait = max(0.0, at - now)
        return wait

    def _forget_old(self, now: float) -> None:
        if len(self.recipients) > 10_000 and self.recipient_interval >= 0:
            horizon = now - self.recipient_interval
            self.recipients = {k: t for k, t in self.recipients.items() if t > horizon}


def parse_rate(value: str) -> float | None:
    """``"20/min"`` -> 1/3 per second; ``"1/s"``, ``"300/h"``; ``"off"`` -> None."""
    text = value.strip().lower()
    if text in {"off", "none", "0"}:
        return None
    count, _, unit = text.partition("/")
    seconds = {
        "s": 1.0,
        "sec": 1.0,
        "m": 60.0,
        "min": 60.0,
        "h": 3600.0,
        "hour": 3600.0,
        "d": 86400.0,
        "day": 86400.0,
    }[unit.strip()]
    number = float(count)
    if number <= 0:
        raise ValueError(value)
    return number / seconds


def typing_seconds(chars: int) -> float:
    """How long to show "typing..." before a text of ``chars`` characters (about 4 chars/s,
    at least 1 s, at most 8 s: long enough to look human, short enough not to stall the queue)."""
    return min(8.0, max(1.0, chars / 4.0))
