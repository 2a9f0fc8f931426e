"""Job outcomes as pure tables: no broker, no trio, no WhatsApp (like test_states.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_trio.core.errors import SendError
from wa_trio.core.headers import HEADER_NOTES
from wa_trio.core.job import not_before
from wa_trio.core.outcome import (
    CRASH_LIMIT,
    DeadLetter,
    Decision,
    Found,
    Outcome,
    Retry,
    ack_plan,
    bare_headers,
    batch_size,
    begin_writes,
    dead_letter_headers,
    decide,
    defer_repeats,
    on_send_failure,
    rest_beyond_ladder,
    retry_headers,
)
from wa_trio.stores.ledger import Begin, Mark
from wa_trio.stores.sqlite.ledger import Ledger


@pytest.mark.parametrize(
    ("state", "ambiguous", "decision"),
    [
        (None, "resend", Decision.SEND),
        ("failed", "resend", Decision.SEND),
        ("sent", "resend", Decision.DUPLICATE),
        ("sent", "skip", Decision.DUPLICATE),
        ("sending", "resend", Decision.AMBIGUOUS_RESEND),
        ("sending", "skip", Decision.AMBIGUOUS_SKIP),
    ],
)
def test_decide(state: str | None, ambiguous: str, decision: Decision) -> None:
    found = None if state is None else Found(state, "h")
    assert decide(found, body_hash="h", ambiguous=ambiguous) is decision


@pytest.mark.parametrize("state", ["sent", "sending", "failed"])
def test_a_message_id_reused_for_another_body_is_a_conflict(state: str) -> None:
    assert decide(Found(state, "first"), body_hash="second", ambiguous="resend") is (
        Decision.CONFLICT
    )


@pytest.mark.parametrize(
    ("deaths", "ambiguous", "decision"),
    [
        (0, "resend", Decision.AMBIGUOUS_RESEND),
        (1, "skip", Decision.AMBIGUOUS_SKIP),
        (CRASH_LIMIT - 2, "resend", Decision.AMBIGUOUS_RESEND),
        (CRASH_LIMIT - 1, "resend", Decision.CRASH_LOOP),
        (CRASH_LIMIT - 1, "skip", Decision.CRASH_LOOP),
        (CRASH_LIMIT + 5, "resend", Decision.CRASH_LOOP),
    ],
)
def test_a_job_in_hand_at_every_death_is_stopped_at_the_limit(
    deaths: int, ambiguous: str, decision: Decision
) -> None:
    assert decide(Found("sending", "h", deaths), body_hash="h", ambiguous=ambiguous) is decision
    # a job that ended its attempts (failed, sent) is never a crash loop, whatever came before
    assert decide(Found("failed", "h", deaths), body_hash="h", ambiguous=ambiguous) is (
        Decision.SEND
    )


def test_the_ledger_counts_deaths_and_a_mark_resets_them(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    [first] = ledger.step([], [Begin("k", True, "h")])
    assert first is None
    [again] = ledger.step([], [Begin("k", True, "h")])  # redelivered after a death
    assert again == Found("sending", "h", 0)
    [third] = ledger.step([], [Begin("k", True, "h")])
    assert third == Found("sending", "h", 1)
    ledger.step([Mark("k", "failed", body_hash="h")], [])
    [after] = ledger.step([], [Begin("k", True, "h")])
    assert after == Found("failed", "h", 0)


def test_rows_from_before_body_hashes_are_trusted() -> None:
    assert decide(Found("sent", None), body_hash="h", ambiguous="resend") is Decision.DUPLICATE


def _error(code: str, *, transient: bool = True) -> SendError:
    return SendError(f"{code} happened", code=code, transient=transient)


@pytest.mark.parametrize(
    ("error", "policy", "done", "verdict"),
    [
        (_error("network"), "resend", 0, Retry(5.0, 1)),
        (_error("network"), "resend", 1, Retry(30.0, 2)),
        (_error("network"), "skip", 1, Retry(30.0, 2)),
        (_error("not_on_whatsapp", transient=False), "resend", 0, "not_on_whatsapp"),
        (_error("network"), "resend", 2, "retries_exhausted"),
        (_error("send_timed_out"), "resend", 0, Retry(5.0, 1)),
        (_error("send_timed_out"), "skip", 0, "send_timed_out"),
    ],
)
def test_on_send_failure(error: SendError, policy: str, done: int, verdict: Retry | str) -> None:
    result = on_send_failure(
        error, ambiguous_policy=policy, retries_done=done, schedule=(5.0, 30.0)
    )
    if isinstance(verdict, Retry):
        assert result == verdict
    else:
        assert isinstance(result, DeadLetter)
        assert result.code == verdict
        assert result.outcome is Outcome.FAILED


def test_an_ambiguous_skip_says_it_may_have_been_sent() -> None:
    result = on_send_failure(
        _error("send_timed_out"), ambiguous_policy="skip", retries_done=0, schedule=(1.0,)
    )
    assert isinstance(result, DeadLetter) and "maybe sent" in result.message


def test_retries_exhausted_names_the_last_error() -> None:
    result = on_send_failure(
        _error("network"), ambiguous_policy="resend", retries_done=3, schedule=(1.0,)
    )
    assert isinstance(result, DeadLetter)
    assert "gave up after 3 retries; last error network" in result.message


def test_batches_only_without_pacing() -> None:
    assert batch_size(50, pacing=False) == 50
    assert batch_size(50, pacing=True) == 1
    assert batch_size(1, pacing=False) == 1


def test_later_copies_of_a_key_are_deferred() -> None:
    assert defer_repeats(["a", "b", "a", "c", "a", "b"]) == ([0, 1, 3], [2, 4, 5])
    assert defer_repeats([]) == ([], [])


@pytest.mark.parametrize(
    ("sent", "unsettled", "plan"),
    [
        ([], [], []),
        ([3], [], [(3, False)]),
        ([1, 2, 3], [], [(3, True)]),
        ([1, 2, 5, 6], [4], [(2, True), (5, False), (6, False)]),
        ([2, 3], [1], [(2, False), (3, False)]),
        ([1, 3], [2], [(1, False), (3, False)]),
    ],
)
def test_ack_plan_never_acks_an_unsettled_job(
    sent: list[int], unsettled: list[int], plan: list[tuple[int, bool]]
) -> None:
    assert ack_plan(sent, unsettled) == plan
    for tag, multiple in plan:  # the property the plan exists for
        if multiple:
            assert all(u > tag for u in unsettled)


def test_dead_letter_headers_keep_the_original_and_say_why() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = dead_letter_headers(
        {"trace_id": "t", "sent_at_ms": 1764000000000, "gone": None},
        code="invalid_json",
        message="x" * 2000,
        exchange="ex",
        routing_key="rk",
        now=at,
    )
    assert headers["trace_id"] == "t"
    assert headers["sent_at_ms"] == "1764000000000"  # out of the encoder's range: text
    assert "gone" not in headers
    assert "sent_at_ms" in headers[HEADER_NOTES] and "gone" in headers[HEADER_NOTES]
    assert headers["x-error-code"] == "invalid_json"
    assert len(headers["x-error-message"]) == 1024
    assert headers["x-original-exchange"] == "ex"
    assert headers["x-original-routing-key"] == "rk"
    assert headers["x-failed-at"] == "2026-01-02T03:04:05.000+00:00"


def test_retry_headers_count_the_retry() -> None:
    headers = retry_headers({"x-retry-count": 1, "a": -5}, retry=2, code="c", message="m")
    assert headers["x-retry-count"] == 2
    assert headers["x-last-error-code"] == "c"
    assert headers["a"] == "-5"


def test_bare_headers_keep_only_ours() -> None:
    bare = bare_headers({"x-error-code": "c", "weird": object(), "x-retry-count": 2})
    assert set(bare) == {"x-error-code", "x-retry-count", HEADER_NOTES}


def test_held_jobs_are_not_counted() -> None:
    assert not Outcome.HELD.counted
    assert all(outcome.counted for outcome in Outcome if outcome is not Outcome.HELD)


@pytest.mark.parametrize(
    ("found", "body_hash", "writes"),
    [
        (None, "h", 0),  # a new job: sending, no death
        (Found("failed", "h", 4), "h", 0),  # an attempt ended: deaths start again
        (Found("held", "h"), "h", 0),
        (Found("sending", "h", 0), "h", 1),  # found in hand: a worker died holding it
        (Found("sending", "h", 1), "h", 2),
        (Found("sending", None, 1), "h", 2),  # rows from before hashes are trusted
        (Found("sent", "h"), "h", None),  # sent: the row stays
        (Found("sending", "other", 0), "h", None),  # another body: a conflict, kept
        (Found("failed", "other"), "h", None),
    ],
)
def test_the_ledgers_begin_rule(found: Found | None, body_hash: str, writes: int | None) -> None:
    assert begin_writes(found, body_hash) == writes


@pytest.mark.parametrize(
    ("error", "rest"),
    [
        (SendError("131049", code="marketing_limited", retry_after=86400.0), 86400.0),
        (SendError("long rate limit", code="cloud_rate_limited", retry_after=7200.0), 7200.0),
        (SendError("short", code="cloud_rate_limited", retry_after=60.0), None),  # the ladder
        (SendError("at the ladder's end", retry_after=1800.0), None),
        (SendError("no hint"), None),
        (SendError("permanent", transient=False, retry_after=86400.0), None),
        (SendError("maybe sent", code="send_timed_out", retry_after=86400.0), None),
    ],
)
def test_a_rest_longer_than_the_ladder_waits_in_the_wait_queues(
    error: SendError, rest: float | None
) -> None:
    assert rest_beyond_ladder(error, (5.0, 30.0, 120.0, 600.0, 1800.0)) == rest


@pytest.mark.parametrize(
    ("headers", "moment"),
    [
        ({"x-not-before": 1_764_111_111.5}, 1_764_111_111.5),
        ({"x-not-before": "1764111111"}, 1_764_111_111.0),
        ({"x-not-before": b"1764111111"}, 1_764_111_111.0),
        ({"x-not-before": True}, None),
        ({"x-not-before": "soon"}, None),
        ({"x-not-before": -5}, None),
        ({"x-not-before": 1e300}, None),
        ({"x-not-before": [1]}, None),
        ({}, None),
    ],
)
def test_not_before_reads_only_a_sane_time(
    headers: dict[str, object], moment: float | None
) -> None:
    assert not_before(headers) == moment
