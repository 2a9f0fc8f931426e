"""When a job stops being worth sending (pure).

A job may carry ``expires_at`` (an instant) or ``ttl_seconds`` (a lifetime from when it was
published: the AMQP ``timestamp`` property, else when this worker first received it). Its
deadline travels with its retry copies in the ``x-expires-at`` header (Unix seconds), so a
retry never restarts the clock. A job past its deadline is dead-lettered ``expired`` right
before its send (after pacing and any wait for WhatsApp), and a retry that would come back
after the deadline is not scheduled: the job is dead-lettered ``expired`` at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from wa_trio.core import headers as h

EXPIRES_HEADER = h.EXPIRES_AT


def deadline(
    *,
    expires_at: datetime | None,
    ttl_seconds: int | None,
    headers: Mapping[str, Any],
    published_at: float | None,
    received_at: float,
) -> float | None:
    """The job's deadline in Unix seconds (None: it never expires); the earliest that applies."""
    candidates: list[float] = []
    carried = headers.get(EXPIRES_HEADER)
    if isinstance(carried, int | float | str) and not isinstance(carried, bool):
        with contextlib.suppress(ValueError):
            value = float(carried)
            if math.isfinite(value):
                candidates.append(value)
    if expires_at is not None:
        candidates.append(expires_at.timestamp())
    if ttl_seconds is not None:
        start = published_at if published_at and published_at > 0 else received_at
        # a publish time in the future (a clock ahead, milliseconds sent as seconds) counts as
        # the moment we received it: it would otherwise push the deadline out for ever
        candidates.append(min(start, received_at) + ttl_seconds)
    return min(candidates) if candidates else None


def is_expired(when: float | None, now: float) -> bool:
    return when is not None and now >= when


def outlives(when: float | None, now: float, delay: float) -> bool:
    """Whether a retry ``delay`` seconds from ``now`` would come back after the deadline."""
    return when is not None and now + delay >= when


__all__ = ["EXPIRES_HEADER", "deadline", "is_expired", "outlives"]
