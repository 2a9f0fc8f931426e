"""Meta's Cloud API limits (core/cloud_limits.py): a table."""

from __future__ import annotations

import pytest

from wa_trio.core.cloud_limits import backoff_for, bucket_for, mps_for, tier_level, window_limit


@pytest.mark.parametrize(
    ("node", "override", "mps"),
    [
        ({"throughput": {"level": "STANDARD"}}, None, 80),
        ({"throughput": {"level": "HIGH"}}, None, 1000),
        ({"throughput": {"level": "high"}}, None, 1000),
        ({"throughput": {"level": "NOT_APPLICABLE"}}, None, 80),
        ({}, None, 80),
        ({"throughput": "HIGH"}, None, 80),
        ([], None, 80),
        ({"throughput": {"level": "HIGH"}}, 20, 20),  # shared with the Business app
    ],
)
def test_the_level_of_a_number(node: object, override: int | None, mps: int) -> None:
    assert mps_for(tier_level(node), override) == mps


@pytest.mark.parametrize("mps", [20, 80, 1000])
def test_the_bucket_never_lets_more_than_the_level_into_one_second(mps: int) -> None:
    rate, burst = bucket_for(mps)
    assert burst + rate * 1.0 <= mps and rate >= 0.95 * mps


@pytest.mark.parametrize(
    ("attempt", "retry_after", "wait"),
    [
        (0, None, 0.25),
        (1, None, 0.5),
        (5, None, 8.0),
        (9, None, 8.0),
        (0, 3.0, 3.0),
        (0, 900.0, 60.0),
    ],
)
def test_the_back_off_after_130429(attempt: int, retry_after: float | None, wait: float) -> None:
    assert backoff_for(attempt, retry_after) == wait


@pytest.mark.parametrize(("mps", "limit"), [(1, 1), (20, 19), (80, 77), (1000, 970)])
def test_the_sends_that_may_start_in_one_second(mps: int, limit: int) -> None:
    assert window_limit(mps) == limit
