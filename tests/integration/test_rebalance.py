"""Replicas of one configuration spread its accounts evenly and move them one at a time by
hand-off (issue 34, ``core.balance``, ``accounts.balance``): six dry-run accounts on one
PostgreSQL store of the test's own, replicas in this process (each with its own session
folder, as on separate hosts), pool jobs flowing throughout. The machine's broker and
PostgreSQL, queues and a database of the test's own."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import delete_topology, job_body, publish_many, sent_records, wait_for
from wa_trio.accounts.multi import Accounts
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker

ACCOUNTS = ("a", "b", "c", "d", "e", "f")


@pytest.fixture
async def replica_env(
    pg_store: str, make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> AsyncIterator[Callable[[str], Settings]]:
    """Settings of replica ``name``: the same queue, accounts and store; its own folder and
    dry-run file. Each account sends at most 20 a second."""
    made: list[Settings] = []

    def replica(name: str) -> Settings:
        settings = Settings.from_env(
            make_env(
                WHATSAPP_STORE=pg_store,
                WHATSAPP_ACCOUNTS=",".join(ACCOUNTS),
                WHATSAPP_SESSION_PATH=str(tmp_path / f"session-{name}"),
                WHATSAPP_DRY_RUN_FILE=str(tmp_path / f"sent-{name}.jsonl"),
                WHATSAPP_RATE_LIMIT="20/s",
                WHATSAPP_RATE_BURST="1",
            )
        )
        made.append(settings)
        return settings

    yield replica
    if made:
        for account in ACCOUNTS:
            await delete_topology(made[0].for_account(account))
        await delete_topology(made[0])


async def _start(settings: Settings, nursery: trio.Nursery) -> Accounts:
    accounts: Accounts = await nursery.start(
        lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
    )
    return accounts


def _held(*replicas: Accounts) -> list[int]:
    return [len(replica.workers) for replica in replicas]


def _sent(*settings: Settings) -> list[dict[str, Any]]:
    return [record for each in settings for record in sent_records(each.dry_run_file)]


async def test_replicas_spread_the_accounts_and_move_them_one_at_a_time_without_a_duplicate(
    replica_env: Callable[[str], Settings], nursery: trio.Nursery
) -> None:
    one, two, three = replica_env("one"), replica_env("two"), replica_env("three")
    first = await _start(one, nursery)
    await wait_for(lambda: _held(first) == [6], what="the first replica holding all six")
    recipients = [f"+55119{n:08d}" for n in range(120)]
    await publish_many(one, [job_body(n, destination=recipients[n % 120]) for n in range(1200)])
    await wait_for(lambda: len(_sent(one)) >= 60, what="sends under way")

    joined = trio.current_time()
    second = await _start(two, nursery)
    await wait_for(lambda: _held(first, second) == [3, 3], timeout=30, what="3 and 3")
    two_replicas = trio.current_time() - joined
    assert first.metrics.rebalance_moves._value.get() == 3  # one at a time, no more

    joined = trio.current_time()
    third = await _start(three, nursery)
    await wait_for(lambda: _held(first, second, third) == [2, 2, 2], timeout=30, what="2, 2, 2")
    three_replicas = trio.current_time() - joined

    second.stop()  # leaves: its two accounts go to the others
    await wait_for(lambda: _held(first, third) == [3, 3], timeout=30, what="3 and 3 again")

    await wait_for(lambda: len(_sent(one, two, three)) >= 1200, timeout=90, what="every job")
    await trio.sleep(1.0)  # a redelivered job would be sent again by now
    sent = _sent(one, two, three)
    texts = Counter(record["text_message"] for record in sent)
    assert len(texts) == 1200 and max(texts.values()) == 1  # each job once, across the moves
    by_replica = [len(sent_records(s.dry_run_file)) for s in (one, two, three)]
    assert all(by_replica), by_replica  # each replica sent its part
    print(f"\nrebalance: 1 -> 2 replicas {two_replicas:.2f} s, 2 -> 3 {three_replicas:.2f} s")
    first.stop()
    third.stop()
