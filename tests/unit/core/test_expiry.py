"""Expiring jobs (issue 15, the expiry part): parsing and the deadline rules, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import job_body
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.expiry import EXPIRES_HEADER, deadline, is_expired, outlives

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    "value", ["2026-11-25T22:00:00Z", "2026-11-25T19:00:00-03:00", "2026-11-25T22:00:00.123+00:00"]
)
def test_expires_at_with_an_offset_is_accepted(value: str) -> None:
    envelope = parse_envelope(job_body(expires_at=value))
    assert envelope.expires_at is not None
    assert envelope.expires_at.astimezone(UTC).hour == 22


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_at": "2026-11-25T22:00:00"},  # no offset: ambiguous
        {"expires_at": "tomorrow"},
        {"expires_at": 1764000000},
        {"expires_at": "2" * 100},
        {"ttl_seconds": 0},
        {"ttl_seconds": -5},
        {"ttl_seconds": "60"},
        {"ttl_seconds": 1.5},
        {"ttl_seconds": True},
        {"ttl_seconds": 10**9},
    ],
)
def test_a_malformed_expiry_is_invalid_expiry(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        parse_envelope(job_body(**fields))
    assert info.value.code == "invalid_expiry"


def test_a_job_without_expiry_never_expires() -> None:
    envelope = parse_envelope(job_body())
    assert envelope.expires_at is None and envelope.ttl_seconds is None
    assert deadline(expires_at=None, ttl_seconds=None, headers={}, published_at=None,
                    received_at=100.0) is None  # fmt: skip
    assert not is_expired(None, 1e12) and not outlives(None, 1e12, 1e6)


def test_the_earliest_deadline_wins() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    both = deadline(
        expires_at=at, ttl_seconds=60, headers={}, published_at=at.timestamp() - 30,
        received_at=at.timestamp(),
    )  # fmt: skip
    assert both == at.timestamp()
    ttl = deadline(expires_at=at + timedelta(hours=1), ttl_seconds=60, headers={},
                   published_at=at.timestamp(), received_at=at.timestamp() + 5)  # fmt: skip
    assert ttl == at.timestamp() + 60


def test_ttl_counts_from_publishing_else_from_first_receipt() -> None:
    assert deadline(expires_at=None, ttl_seconds=10, headers={}, published_at=1000,
                    received_at=5000.0) == 1010  # fmt: skip
    assert deadline(expires_at=None, ttl_seconds=10, headers={}, published_at=None,
                    received_at=5000.0) == 5010  # fmt: skip


def test_a_retry_copy_keeps_the_clock() -> None:
    carried = {EXPIRES_HEADER: 1234.5}
    assert deadline(expires_at=None, ttl_seconds=10, headers=carried, published_at=None,
                    received_at=99999.0) == 1234.5  # fmt: skip
    for garbage in ("soon", float("nan"), True, None, [1]):
        assert deadline(expires_at=None, ttl_seconds=None, headers={EXPIRES_HEADER: garbage},
                        published_at=None, received_at=0.0) is None  # fmt: skip


def test_expired_and_outlives() -> None:
    assert is_expired(100.0, 100.0) and not is_expired(100.0, 99.9)
    assert outlives(100.0, 90.0, 10.0) and not outlives(100.0, 90.0, 5.0)
