"""Epoch timestamps from outside, made safe to turn into dates (pure).

A timestamp a peer sends (Meta's webhook, neonize's events) reaches ``datetime.fromtimestamp``
later, in a task or a callback where an exception would end the worker. ``epoch_seconds`` is
the one gate: whatever it is given, it answers a finite number of seconds that ``datetime`` can
represent, or 0.0 ("unknown", shown as no time).
"""

from __future__ import annotations

import math
from typing import Any

#: 9999-12-31T23:59:59Z: the last second ``datetime`` represents
LATEST = 253_402_300_799.0
#: units a peer may count in, as a divisor to seconds
SECONDS, MILLISECONDS = 1.0, 1000.0


def epoch_seconds(value: Any, *, unit: float = SECONDS) -> float:
    """``value`` (a number or a numeric string, in ``unit``) as epoch seconds in
    [0, ``LATEST``]; 0.0 for anything else (NaN, infinities, negatives, out of range,
    not a number)."""
    if isinstance(value, bool):
        return 0.0
    try:
        seconds = float(value) / unit
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(seconds) or not 0.0 <= seconds <= LATEST:
        return 0.0
    return seconds


__all__ = ["LATEST", "MILLISECONDS", "SECONDS", "epoch_seconds"]
