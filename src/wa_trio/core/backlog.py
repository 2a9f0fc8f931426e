"""How old the oldest waiting job is (pure), for ``wa_trio_oldest_job_age_seconds``.

AMQP cannot tell the age of a queue's head without taking it, and the management API is not
ours to require. What the worker knows: the queue's sampled depth, since when it has held jobs
without once being seen empty, and when the last job it took was published. The queue is FIFO,
so the head was published no earlier than the job taken last; and (within one sample interval)
no earlier than the backlog began. The later of the two is the estimate: it grows while a
worker is stuck (nothing taken) and stays small while it keeps up with a busy queue.
"""

from __future__ import annotations

import math


def oldest_job_age(
    now: float,
    depth: int | None,
    backlog_since: float | None,
    last_taken_published: float | None,
) -> float:
    """Seconds; 0 when no job waits, NaN when the depth is unknown (the broker cannot be asked).

    ``backlog_since``: since when the queue has held jobs (None: seen empty). The job taken last
    counts only when it belongs to this backlog (taken, and published, after it began)."""
    if depth is None:
        return math.nan
    if depth == 0 or backlog_since is None:
        return 0.0
    start = backlog_since
    if last_taken_published is not None and last_taken_published > start:
        start = last_taken_published
    return max(0.0, now - start)


__all__ = ["oldest_job_age"]
