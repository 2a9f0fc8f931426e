"""Scheduled sends: the ladder of hops and the send_at field (pure)."""

from __future__ import annotations

import pytest

from tests.helpers import job_body
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.schedule import LADDER, next_hop

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("remaining", "hop"),
    [(3 * 86400, 86400.0), (86399, 21600.0), (3600, 3600.0), (45, 30.0), (4.9, 1.0), (1.0, 1.0),
     (0.99, None), (0.0, None), (-5.0, None)],
)  # fmt: skip
def test_next_hop_is_the_longest_step_not_past_the_time(
    remaining: float, hop: float | None
) -> None:
    assert next_hop(remaining) == hop


def test_a_far_job_comes_back_within_a_second() -> None:
    """Walk the ladder: every hop ends before the send time, and the last leaves < 1 s."""
    for start in (2.0, 30.0, 300.0, 3 * 86400 + 1234.5):
        remaining, hops = start, 0
        while (hop := next_hop(remaining)) is not None:
            assert hop <= remaining
            remaining -= hop
            hops += 1
        assert 0 <= remaining < LADDER[-1]
        assert hops <= 30  # a few hops, even for days ahead


def test_send_at_needs_an_offset() -> None:
    assert parse_envelope(job_body(send_at="2030-01-01T09:00:00-03:00")).send_at is not None
    for bad in ("2030-01-01T09:00:00", "later", 1893456000):
        with pytest.raises(ValidationError) as info:
            parse_envelope(job_body(send_at=bad))
        assert info.value.code == "invalid_schedule"
