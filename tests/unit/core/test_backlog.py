"""The oldest-job estimate (core/backlog.py): a table."""

from __future__ import annotations

import math

import pytest

from wa_trio.core.backlog import oldest_job_age


@pytest.mark.parametrize(
    ("depth", "backlog_since", "last_taken", "age"),
    [
        (0, None, None, 0.0),  # nothing waits
        (0, 100.0, 990.0, 0.0),  # seen empty: whatever was taken before does not count
        (5, None, None, 0.0),  # first sample of a backlog not yet recorded
        (5, 400.0, None, 600.0),  # nothing taken yet: the backlog's age
        (5, 400.0, 300.0, 600.0),  # taken before the backlog began: stuck since it began
        (5, 400.0, 950.0, 50.0),  # keeping up with a busy queue: the job taken last
        (5, 400.0, 1200.0, 0.0),  # a publisher's clock ahead of ours: never negative
    ],
)
def test_the_oldest_job_age(
    depth: int, backlog_since: float | None, last_taken: float | None, age: float
) -> None:
    assert oldest_job_age(1000.0, depth, backlog_since, last_taken) == age


def test_an_unknown_depth_is_nan_not_zero() -> None:
    assert math.isnan(oldest_job_age(1000.0, None, 400.0, 950.0))
