"""Pacing bounds, with synthetic times and with trio's MockClock."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from tests.helpers import max_in_window
from wa_trio.core.pacing import Pacer, parse_rate


def run_burst(pacer: Pacer, recipients: list[str], now: float = 0.0) -> list[float]:
    """All jobs arrive at once (a backlog); returns when each one is sent."""
    sent = []
    for recipient in recipients:
        wait = pacer.reserve(now, recipient)
        now += wait
        sent.append(now)
    return sent


@pytest.mark.parametrize(("limit", "burst"), [(20, 1), (20, 5), (5, 3), (60, 10)])
def test_no_60s_window_holds_more_than_limit_plus_burst(limit: int, burst: int) -> None:
    pacer = Pacer(rate=limit / 60, burst=burst, jitter=1.0, rng=random.Random(7))
    sent = run_burst(pacer, [f"+55119{i:08d}" for i in range(500)])
    assert max_in_window(sent, 60.0) <= limit + burst
    # and it is not slower than it needs to be: 500 sends take about 500 / rate
    assert sent[-1] <= (500 - burst) / (limit / 60) + 500 * 1.0 + 1


def test_burst_goes_out_at_once_after_a_quiet_period() -> None:
    pacer = Pacer(rate=1 / 6, burst=3)
    assert run_burst(pacer, ["+1", "+2", "+3"]) == [0.0, 0.0, 0.0]
    assert pacer.reserve(0.0, "+4") == pytest.approx(6.0)


def test_recipient_interval_holds_under_a_burst_to_one_number() -> None:
    pacer = Pacer(rate=None, burst=1, recipient_interval=10.0, jitter=0.5, rng=random.Random(1))
    sent = run_burst(pacer, ["+5511999999999"] * 20)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 10.0
    # other recipients are not held back by it
    assert pacer.reserve(sent[-1], "+5511888888888") <= 0.5


def test_jitter_is_bounded_and_random() -> None:
    pacer = Pacer(rate=None, jitter=2.0, rng=random.Random(3))
    waits = [pacer.reserve(100.0 * i, f"+{i}") for i in range(200)]
    assert all(0 <= w < 2.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 150


def test_off_means_no_wait() -> None:
    pacer = Pacer(rate=None)
    assert not pacer.enabled
    assert run_burst(pacer, ["+1"] * 100) == [0.0] * 100


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20/min", 20 / 60), ("1/s", 1.0), ("300/h", 300 / 3600), ("off", None)],
)
def test_parse_rate(text: str, per_second: float | None) -> None:
    assert parse_rate(text) == (pytest.approx(per_second) if per_second else None)


async def _sender(pacer: Pacer, recipients: list[str], sent: list[float]) -> None:
    for recipient in recipients:
        await trio.sleep(pacer.reserve(trio.current_time(), recipient))
        sent.append(trio.current_time())


def test_mock_clock_bounds_hold_under_trio() -> None:
    """The same rules driven through trio.sleep with an autojumping MockClock."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    sent: list[float] = []
    other: list[float] = []
    pacer = Pacer(rate=20 / 60, burst=5, recipient_interval=15.0, jitter=2.0, rng=random.Random(11))

    async def main() -> None:
        ticks = 0

        async def heartbeat() -> None:  # stands in for AMQP heartbeats / HTTP
            nonlocal ticks
            while True:
                await trio.sleep(1.0)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            await _sender(pacer, ["+5511999999999"] * 10 + [f"+1{i}" for i in range(200)], sent)
            nursery.cancel_scope.cancel()
        other.append(float(ticks))

    trio.run(main, clock=clock)
    assert max_in_window(sent, 60.0) <= 20 + 5
    same = sent[:10]
    assert min(b - a for a, b in itertools.pairwise(same)) >= 15.0
    # the loop kept running while sends waited: one heartbeat a second of waiting
    assert other[0] >= int(sent[-1]) - 1
