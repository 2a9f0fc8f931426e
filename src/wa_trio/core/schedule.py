"""Scheduled sends: when a job with ``send_at`` is not due yet, where it waits (pure).

A job is never held in the worker's memory for long: it is parked in the broker, in durable
delay queues (``<queue>.wait.<step>``: per-queue TTL, dead-lettering back to the job exchange),
hopping down a ladder of steps re-evaluated on each return. A job for three days from now takes
a few one-day hops, then six-hour, one-hour, ..., one-second ones, and comes back within about a
second of its time; the last sub-second is waited in the worker. A restart of the worker or of
the broker loses nothing (the queues are durable, the messages persistent).
"""

from __future__ import annotations

#: the hops, longest first (seconds); the last one bounds the accuracy
LADDER: tuple[float, ...] = (86400.0, 21600.0, 3600.0, 600.0, 120.0, 30.0, 5.0, 1.0)


def next_hop(remaining: float, ladder: tuple[float, ...] = LADDER) -> float | None:
    """The longest step that does not pass the send time; None when less than the shortest
    step is left (the worker waits that out itself, or sends at once)."""
    for step in ladder:
        if remaining >= step:
            return step
    return None


__all__ = ["LADDER", "next_hop"]
