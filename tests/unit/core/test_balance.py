"""Spreading accounts over replicas, decided without I/O (core/balance.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_trio.core import balance


@pytest.mark.parametrize(
    ("accounts", "replicas", "shares"),
    [
        (20, 1, [20]),  # alone: all of them
        (20, 2, [10, 10]),
        (20, 3, [7, 7, 6]),  # the oldest get the one more
        (10, 4, [3, 3, 2, 2]),  # not 3, 3, 3, 1
        (20, 0, [20]),  # not counted yet (before the first beat): alone
        (2, 3, [1, 1, 0]),  # more replicas than accounts: the newest stands by
    ],
)
def test_the_shares_are_even_within_one_and_the_oldest_take_the_rest(
    accounts: int, replicas: int, shares: list[int]
) -> None:
    assert [balance.fair_share(accounts, replicas, rank) for rank in range(len(shares))] == shares


@given(st.integers(0, 500), st.integers(1, 50))
def test_the_shares_add_up_to_the_accounts_and_differ_by_at_most_one(
    accounts: int, replicas: int
) -> None:
    shares = [balance.fair_share(accounts, replicas, rank) for rank in range(replicas)]
    assert sum(shares) == accounts  # every account has a replica aiming at it
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)  # a newcomer never gets more than the old


@pytest.mark.parametrize(
    ("held", "share", "queue"), [(0, 10, True), (9, 10, True), (10, 10, False), (12, 10, False)]
)
def test_a_replica_queues_for_more_only_under_its_share(held: int, share: int, queue: bool) -> None:
    assert balance.may_queue(held, share) is queue


@pytest.mark.parametrize(
    ("held", "share", "moving", "busy", "moved"),
    [
        (["a", "b", "c"], 3, False, (), None),  # at its share: nothing moves
        (["a", "b", "c"], 2, False, (), "c"),  # over: the last by name
        (["c", "a", "b"], 2, False, (), "c"),  # whatever order it holds them in
        (["a", "b", "c"], 2, True, (), None),  # one move at a time
        (["a", "b", "c"], 2, False, ("c",), "b"),  # never one with a send in flight
        (["a", "b", "c"], 1, False, ("a", "b", "c"), None),  # all busy: the next look
    ],
)
def test_one_idle_account_moves_at_a_time_while_over_the_share(
    held: list[str], share: int, moving: bool, busy: tuple[str, ...], moved: str | None
) -> None:
    assert balance.to_move(held, share, moving=moving, busy=busy) == moved


@pytest.mark.parametrize(
    ("taken", "back", "since", "now", "done"),
    [
        (True, False, 0.0, 0.1, True),  # another replica holds it
        (False, True, 0.0, 0.1, True),  # this one took it back: nobody queued for it
        (False, False, 0.0, 1.0, False),  # still on its way
        (False, False, 0.0, balance.MOVE_WITHIN, True),  # nobody took it: the next may go
    ],
)
def test_a_move_is_over_when_taken_elsewhere_or_back_or_after_its_bound(
    taken: bool, back: bool, since: float, now: float, done: bool
) -> None:
    assert balance.move_done(taken=taken, back=back, since=since, now=now) is done


def test_the_configuration_is_the_queue_and_the_set_of_accounts() -> None:
    key = balance.configuration("q", ["a", "b"])
    assert key == balance.configuration("q", ["b", "a"])  # the same accounts, any order
    assert key != balance.configuration("q", ["a", "b", "c"])
    assert key != balance.configuration("other", ["a", "b"])


def test_a_dead_replica_is_forgotten_before_a_move_would_give_up_on_it() -> None:
    # the registry stops counting a replica well within the time a move may take
    assert balance.ALIVE_WITHIN < balance.MOVE_WITHIN
    assert balance.BEAT_EVERY * 3 <= balance.ALIVE_WITHIN  # two beats may be lost
