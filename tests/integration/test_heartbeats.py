"""The heartbeats of leases held on a process's shared lease lines (accounts/heartbeat.py):
beaten from the line's thread, so a late event loop does not fence accounts whose line
answers (200 accounts starting ran the loop half a second late: hundreds of fences a
minute); a line that fails or an epoch that moves on still does, at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import trio

from tests.helpers import pg_query, terminate_backends, wait_for
from wa_trio.accounts.heartbeat import Heartbeats
from wa_trio.accounts.lease import Lease
from wa_trio.core.lease_rules import FENCE_AFTER, FENCED_WITHIN
from wa_trio.stores.postgres import LeaseConnection, LeaseLines, LeaseLost, migrate


@pytest.fixture
async def held(pg_store: str) -> AsyncIterator[tuple[Heartbeats, list[Lease]]]:
    """Three accounts' leases on one shared line, their heartbeats running."""
    await trio.to_thread.run_sync(migrate, pg_store)
    heartbeats = Heartbeats(LeaseLines(pg_store))
    leases = []
    for account in ("h1", "h2", "h3"):
        connection = LeaseConnection(pg_store, account, heartbeats.lines)
        assert await trio.to_thread.run_sync(connection.try_take) == 1
        leases.append(Lease(connection, heartbeats))
    assert len({lease.connection.line for lease in leases}) == 1
    try:
        yield heartbeats, leases
    finally:
        for lease in leases:
            await trio.to_thread.run_sync(lease.connection.close)


@pytest.fixture
async def lost(
    held: tuple[Heartbeats, list[Lease]], nursery: trio.Nursery
) -> AsyncIterator[dict[str, float]]:
    """The three leases kept (their heartbeats running) for half a second: when each was
    lost (``time.monotonic``), as it happens."""
    heartbeats, leases = held
    lost: dict[str, float] = {}
    nursery.start_soon(heartbeats.run)

    async def keep(lease: Lease) -> None:
        try:
            await lease.keep()
        except LeaseLost:
            lost[lease.account] = time.monotonic()

    for lease in leases:
        nursery.start_soon(keep, lease)
    await trio.sleep(0.5)
    yield lost
    nursery.cancel_scope.cancel()


async def test_a_late_event_loop_fences_nobody(lost: dict[str, float]) -> None:
    for _ in range(3):  # the loop held up, three times, longer than FENCE_AFTER
        time.sleep(FENCE_AFTER * 2)  # the point: a loop that is late
        await trio.sleep(0.3)
    assert lost == {}


async def test_a_cut_line_fences_its_accounts_within_the_rules(
    lost: dict[str, float], pg_store: str
) -> None:
    cut = time.monotonic()
    await trio.to_thread.run_sync(terminate_backends, pg_store, "wa-trio leases 1")
    await wait_for(lambda: len(lost) == 3, timeout=5, what="the three fenced")
    assert max(lost.values()) - cut <= FENCED_WITHIN


async def test_an_epoch_moved_on_fences_that_account_only(
    lost: dict[str, float], pg_store: str
) -> None:
    await trio.to_thread.run_sync(
        pg_query,
        pg_store,
        "UPDATE wa_trio_leases SET epoch = epoch + 1 WHERE account = 'h2' RETURNING account",
    )
    await wait_for(lambda: "h2" in lost, timeout=5, what="h2 fenced")
    await trio.sleep(FENCE_AFTER * 2)
    assert set(lost) == {"h2"}
