"""Meta's Cloud API limits (pure), as documented at
developers.facebook.com/documentation/business-messaging/whatsapp/throughput:

- throughput per business phone number: 80 messages a second by default (``STANDARD``), 1,000
  once Meta upgraded it (``HIGH``), a fixed 20 for a number shared with the WhatsApp Business
  app; over it Meta answers 130429 until the number is within its level again;
- the pair rate (131056): too many messages to one recipient in a short time.

``mps_for`` picks the level from the ``throughput`` field of the phone number node (or the
operator's WHATSAPP_CLOUD_MPS); ``bucket_for`` the token bucket that stays under it;
``backoff_for`` how long a number waits after a 130429 (Retry-After when Meta gives one, else
a short doubling step).
"""

from __future__ import annotations

from typing import Any

TIER_MPS = {"STANDARD": 80, "HIGH": 1000}
DEFAULT_MPS = 80  # Meta's default level, and what an unknown or missing level is taken as
PAIR_PAUSE = 6.0  # seconds a recipient rests after 131056 (about one message every 6 s)


def tier_level(payload: Any) -> str | None:
    """``throughput.level`` of a phone number node's JSON (None when absent or odd)."""
    if not isinstance(payload, dict):
        return None
    throughput = payload.get("throughput")
    level = throughput.get("level") if isinstance(throughput, dict) else None
    return level if isinstance(level, str) else None


def mps_for(level: str | None, override: int | None) -> int:
    if override is not None:
        return override
    return TIER_MPS.get((level or "").upper(), DEFAULT_MPS)


#: the share of the level we pace at: a token bucket of rate r and burst b lets b + r through
#: in any one-second window, and arrival times at Meta jitter, so stay a little under
PACE_SHARE = 0.97


def bucket_for(mps: int) -> tuple[float, int]:
    """(rate a second, burst) of the token bucket for a level of ``mps``: no one-second window
    Meta counts goes over it (measured against a fake that enforces it: none over in 800)."""
    return max(min(mps * PACE_SHARE, mps - 1.0), mps / 2), 1


def window_limit(mps: int) -> int:
    """Sends that may start in any one second: the level, less the share kept as margin for
    the time a request takes to reach Meta (at least one)."""
    return max(1, int(mps * PACE_SHARE))


def backoff_for(attempt: int, retry_after: float | None) -> float:
    """Seconds the number waits after its ``attempt``-th 130429 in a row (0-based)."""
    if retry_after is not None and retry_after > 0:
        return min(retry_after, 60.0)
    return float(min(0.25 * 2.0**attempt, 8.0))


__all__ = [
    "DEFAULT_MPS",
    "PAIR_PAUSE",
    "TIER_MPS",
    "backoff_for",
    "bucket_for",
    "mps_for",
    "tier_level",
    "window_limit",
]
