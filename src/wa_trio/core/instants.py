"""Epoch timestamps from outside, made safe to turn into dates (pure).

A timestamp a peer sends (Meta's webhook, neonize's events) reaches ``datetime.fromtimestamp``
later, in a task or a callback where an exception would end the worker. ``epoch_seconds`` is
the one gate: whatever it is given, it answers a finite number of seconds that ``datetime`` can
represent, or 0.0 ("unknown", shown as no time).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
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


#: RFC 3339's date-time (section 5.6), nothing more lenient: ``datetime.fromisoformat`` also
#: takes week dates, basic formats and dates alone, and refuses a leap second
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<hm>\d{2}:\d{2}):(?P<second>\d{2})"
    r"(?P<fraction>\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)


class LocalTimeError(ValueError):
    """An RFC 3339 form without its offset: a local time, ambiguous."""


def rfc3339(value: Any) -> datetime:
    """An aware datetime from an RFC 3339 date-time; a leap second (``:60``) is the instant
    after ``:59``; fractions past microseconds are cut.

    Raises:
        LocalTimeError: no offset.
        ValueError: anything else that is not RFC 3339 (or no such day).
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) and len(value) <= 64 else None
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    if match["offset"] is None:
        raise LocalTimeError("no offset")
    leap = match["second"] == "60"
    offset = "+00:00" if match["offset"] in "Zz" else match["offset"]
    text = f"{match['date']}T{match['hm']}:{'59' if leap else match['second']}"
    when = datetime.fromisoformat(text + (match["fraction"] or "")[:7] + offset)
    return when + timedelta(seconds=1) if leap else when


__all__ = ["LATEST", "MILLISECONDS", "SECONDS", "LocalTimeError", "epoch_seconds", "rfc3339"]
