"""Accounts spread over the replicas of one configuration (issue 34; the rules and why:
``core.balance``; docs/scaling.md, "Rebalancing").

A process of several accounts on the PostgreSQL store runs one ``Balancer`` in its root
nursery, before its accounts: it beats in the registry (``stores.postgres.replicas``), knows
the accounts this process holds (``holding``/``released``, told by each account's replica
loop) and its share. The replica loop asks ``may_queue`` before it queues for a lease, and
drains and releases an account when ``holding``'s event is set (the move). The balancer never
fails the process: a store it cannot reach leaves the last share in place.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import attrs
import eliot
import trio

from wa_trio.accounts.heartbeat import Heartbeats
from wa_trio.core import balance
from wa_trio.metrics import Metrics
from wa_trio.stores.files import StartupError
from wa_trio.stores.postgres import LeaseLines, ReplicaRegistry, StoreError, migrate


@attrs.define(eq=False)
class Balancer:
    """This process's part of the spread (trio thread only)."""

    store: str
    configuration: str
    accounts: int
    metrics: Metrics
    #: the accounts with a send in flight now (never moved then)
    busy: Callable[[], Collection[str]] = lambda: ()
    replicas: int = 1
    rank: int = 0  # among the replicas alive, by age
    held: set[str] = attrs.field(factory=set)
    #: the accounts some replica held at the last beat (None: not known yet)
    taken: set[str] | None = None
    #: the connections this process's accounts hold their leases on (shared: issue 34), and
    #: their heartbeats (run beside the balancer)
    heartbeats: Heartbeats = attrs.field(
        default=attrs.Factory(lambda self: Heartbeats(LeaseLines(self.store)), takes_self=True)
    )
    _move_signals: dict[str, trio.Event] = attrs.field(factory=dict)
    _moving: tuple[str, float] | None = None

    @property
    def share(self) -> int:
        return balance.fair_share(self.accounts, self.replicas, self.rank)

    def may_queue(self) -> bool:
        """Whether to queue for one more lease now (else only try it: ``core.balance``)."""
        return balance.may_queue(len(self.held), self.share)

    def free(self, account: str) -> bool:
        """Whether to try ``account`` now: nobody held it at the last beat (its holder died
        or stopped), this replica is not over its share (it would only move it again) and
        is not moving it away."""
        if len(self.held) > self.share:
            return False
        if self._moving is not None and self._moving[0] == account:
            return False  # moved away from here: another replica's to take
        return self.taken is None or account not in self.taken

    def holding(self, account: str) -> trio.Event:
        """This process took ``account``; the event is set when it should move it."""
        self.held.add(account)
        self._move_signals[account] = moved = trio.Event()
        self.metrics.accounts_held.set(len(self.held))
        return moved

    def released(self, account: str) -> None:
        self.held.discard(account)
        self._move_signals.pop(account, None)
        self.metrics.accounts_held.set(len(self.held))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat, and move one account at a time while this process holds more than its
        share. Started before the accounts (its first beat says how many replicas share)."""
        try:
            await trio.to_thread.run_sync(migrate, self.store)
            with trio.CancelScope(shield=True):  # made: ours to close
                registry = await trio.to_thread.run_sync(
                    ReplicaRegistry, self.store, self.configuration
                )
        except StoreError as error:
            raise StartupError(error.message) from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.heartbeats.run)
                await self._beat(registry)
                task_status.started()
                await self._balance(registry)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(registry.leave)

    async def _balance(self, registry: ReplicaRegistry) -> None:
        last_beat = trio.current_time()
        while True:
            await trio.sleep(balance.LOOK_EVERY if self._moving else balance.BEAT_EVERY)
            if trio.current_time() - last_beat >= balance.BEAT_EVERY:
                await self._beat(registry)
                last_beat = trio.current_time()
            await self._look(registry)

    async def _beat(self, registry: ReplicaRegistry) -> None:
        try:
            replicas, rank = await trio.to_thread.run_sync(registry.beat)
            self.taken = await trio.to_thread.run_sync(registry.held_now)
        except StoreError as error:
            eliot.log_message(message_type="wa_trio:balance:store_failing", error=error.message)
            return
        if (replicas, rank) != (self.replicas, self.rank):
            eliot.log_message(
                message_type="wa_trio:balance:replicas",
                replicas=replicas,
                rank=rank,
                share=balance.fair_share(self.accounts, replicas, rank),
                held=len(self.held),
            )
        self.replicas, self.rank = replicas, rank
        self.metrics.replicas_alive.set(replicas)

    async def _look(self, registry: ReplicaRegistry) -> None:
        """End the move under way once another replica holds its account; start the next."""
        now = trio.current_time()
        if self._moving is not None:
            account, since = self._moving
            taken = False
            back = account in self.held and not self._move_signals[account].is_set()
            if account not in self.held:  # drained and released: is it held elsewhere?
                try:
                    taken = account in await trio.to_thread.run_sync(registry.held_now)
                except StoreError:
                    taken = False
            if not balance.move_done(taken=taken, back=back, since=since, now=now):
                return
            eliot.log_message(
                message_type="wa_trio:balance:moved",
                account=account,
                taken=taken,
                seconds=round(now - since, 3),
            )
            self._moving = None
        chosen = balance.to_move(sorted(self.held), self.share, moving=False, busy=set(self.busy()))
        if chosen is None:
            return
        self._move(chosen, now)

    def _move(self, account: str, now: float) -> None:
        self._moving = (account, now)
        self.metrics.rebalance_moves.inc()
        eliot.log_message(
            message_type="wa_trio:balance:move",
            account=account,
            held=len(self.held),
            share=self.share,
            replicas=self.replicas,
        )
        self._move_signals[account].set()


__all__ = ["Balancer"]
