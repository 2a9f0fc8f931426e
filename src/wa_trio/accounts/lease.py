"""An account's lease across replicas (WHATSAPP_STORE=postgresql://...): taken (a standby
queues for it at the server), kept (pinged; lost -> ``LeaseLost`` fences the holder),
released. The timings and why they are safe: ``lease_rules``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import eliot
import trio

from wa_trio.accounts.heartbeat import Heartbeats
from wa_trio.accounts.standby import wait_as_standby
from wa_trio.config.settings import Settings
from wa_trio.core.errors import first_leaf
from wa_trio.core.lease_rules import (
    FENCE_AFTER,
    PING_EVERY,
    RETRY_EVERY,
    TRY_EVERY,
    WAIT_SLICE,
    must_fence,
    takeover_grace,
)
from wa_trio.metrics import Metrics
from wa_trio.stores.postgres import LeaseConnection, LeaseLines, LeaseLost, StoreError
from wa_trio.stores.postgres.leases import FENCE_LOOK_EVERY


class Lease:
    """A held lease: its connection and epoch (``heartbeats``: its process's, when it is held
    on a shared line)."""

    def __init__(self, connection: LeaseConnection, heartbeats: Heartbeats | None = None) -> None:
        self.connection = connection
        self.heartbeats = heartbeats
        self.account = connection.account
        self.epoch = connection.epoch
        self.inherited_from = connection.inherited_from

    async def keep(
        self,
        describe: Callable[[], tuple[str | None, str | None]] = lambda: (None, None),
        *,
        on_lost: Callable[[], None] = lambda: None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ping the lease connection every ``PING_EVERY`` s with the account's heartbeat
        (``describe``: its state and masked linked number); raise ``LeaseLost`` (the caller's
        nursery then cancels the account's worker: the fence) when a ping fails, finds the
        epoch moved on, or none has answered for ``FENCE_AFTER`` s; ``on_lost`` runs first
        (the worker stops what a cancel cannot reach: its shielded sends)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._look_again)
                if self.heartbeats is None:
                    await self._keep(describe, task_status)
                else:
                    await self._keep_beaten(self.heartbeats, describe, task_status)
        except* LeaseLost as group:
            on_lost()
            raise first_leaf(group) from None

    async def _look_again(self) -> None:
        """Fence the session's tables whatsmeow made since (beside the pings: a look waits
        for the store pool and for table locks, a ping must not)."""
        while True:
            await trio.sleep(FENCE_LOOK_EVERY)
            await trio.to_thread.run_sync(self.connection.look_again, abandon_on_cancel=True)

    async def _keep_beaten(
        self,
        heartbeats: Heartbeats,
        describe: Callable[[], tuple[str | None, str | None]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        """``_keep`` on a shared line: its process's ``Heartbeats`` ping it with the others;
        the same rules (a failed or moved beat, or none for ``FENCE_AFTER`` s, fences)."""
        beat = heartbeats.join(self.connection, describe)
        task_status.started()
        try:
            raise LeaseLost(await beat.until_lost())
        finally:
            heartbeats.leave(self.connection)

    async def _keep(
        self,
        describe: Callable[[], tuple[str | None, str | None]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        last_good = trio.current_time()
        task_status.started()
        while True:
            with trio.move_on_after(max(0.0, last_good + FENCE_AFTER - trio.current_time())):
                try:
                    await trio.to_thread.run_sync(
                        self.connection.ping, *describe(), abandon_on_cancel=True
                    )
                except StoreError as error:
                    raise LeaseLost(f"lease of {self.account} lost: {error.message}") from None
                last_good = trio.current_time()
            if must_fence(last_good, trio.current_time()):
                raise LeaseLost(
                    f"lease of {self.account} lost: no answer from the store for {FENCE_AFTER} s"
                )
            await trio.sleep(PING_EVERY)

    async def release(self, *, clean: bool) -> None:
        """End the lease (shielded: it runs while the worker is being cancelled)."""
        with trio.CancelScope(shield=True):
            close = self.connection.release if clean else self.connection.close
            await trio.to_thread.run_sync(close)


async def take_lease(
    settings: Settings,
    store: str,
    metrics: Metrics,
    *,
    serve_http: bool,
    heartbeats: Heartbeats | None = None,
    may_queue: Callable[[], bool] = lambda: True,
    is_free: Callable[[], bool] = lambda: True,
) -> Lease:
    """The account's lease: at once when it is free, else as a standby. Alone in its process
    (``heartbeats`` None) the standby queues for it at the server on a connection of its own.
    An account of several (``heartbeats``: its process's shared lease lines) tries it on its
    line every ``TRY_EVERY`` s while ``may_queue`` (the process is under its share:
    ``core.balance``), else only when ``is_free`` says nobody holds it. When its last holder
    did not release it (killed, cut off), wait ``takeover_grace`` more: a holder cut off by
    the server has fenced itself by then.

    Raises:
        StoreError: the store cannot be reached at all when starting (one line).
    """
    account = settings.account_name
    lines = heartbeats.lines if heartbeats is not None else None
    held: list[LeaseConnection | None] = [None]  # the connection in use (closed unless returned)
    try:
        taken = held[0] = await _open(store, account, lines)
        first = lines is None or may_queue() or is_free()  # a share's move is not undone
        if not first or await trio.to_thread.run_sync(taken.try_take) is None:
            retry = partial(_retry, held, store, account, lines, may_queue, is_free)
            reason = f"standby: another replica holds account {account}"
            taken = await wait_as_standby(settings, metrics, retry, reason, serve_http=serve_http)
            held[0] = taken
        lease = Lease(taken, heartbeats)
        metrics.lease_epoch.set(lease.epoch)
        eliot.log_message(
            message_type="wa_trio:lease:taken",
            account=account,
            epoch=lease.epoch,
            inherited_from=lease.inherited_from,
        )
        grace = takeover_grace(lease.inherited_from, taken.silent_for)
        metrics.takeover_grace.set(grace)
        await trio.sleep(grace)
    except BaseException:  # cancelled (a stop) or failed: the lock goes with the connection
        _close(held)
        raise
    return lease


async def _retry(
    held: list[LeaseConnection | None],
    store: str,
    account: str,
    lines: LeaseLines | None,
    may_queue: Callable[[], bool],
    is_free: Callable[[], bool],
) -> LeaseConnection:
    """Try the lease until it is ours (``take_lease``); a store that went away: a new
    connection."""
    while True:
        queue = may_queue()
        try:
            if queue or is_free():
                connection = held[0] = held[0] or await _open(store, account, lines)
                wait = WAIT_SLICE if queue and lines is None else 0.0
                if await trio.to_thread.run_sync(connection.try_take, wait):
                    return connection
            if lines is None and not queue:  # at its share: no connection while it waits
                _close(held)
            if lines is not None or not queue:
                await trio.sleep(TRY_EVERY if lines is not None else WAIT_SLICE)
        except StoreError as error:
            eliot.log_message(message_type="wa_trio:lease:store_failing", error=error.message)
            _close(held)
            await trio.sleep(RETRY_EVERY)


def _close(held: list[LeaseConnection | None]) -> None:
    if held[0] is not None:
        held[0].close()
        held[0] = None


async def _open(store: str, account: str, lines: LeaseLines | None) -> LeaseConnection:
    """A lease connection; shielded while it is made (a cancel then would drop an open
    connection on the floor); ``connect_timeout`` bounds it."""
    with trio.CancelScope(shield=True):
        connection = await trio.to_thread.run_sync(LeaseConnection, store, account, lines)
    return connection


__all__ = ["Lease", "LeaseLost", "take_lease"]
