"""The heartbeats of the leases a process of several accounts holds on its shared lease lines
(issue 34): one statement per line every ``PING_EVERY`` s carries every account on it (a
ping per account would be 800 round trips a second for 200 accounts, through the thread
limiter the sends use too).

Each line is beaten from a thread of its own (``_pump``), not from the event loop: a process
of 200 accounts starting, or at its most CPU, can run its loop late by half a second, and
beats issued by a late loop aged past ``FENCE_AFTER`` and fenced accounts whose line was
answering all along (measured: hundreds of fences a minute, each restart adding load). A late
loop needs no fence: the line's connection holds the accounts' locks, so nobody can take them
and no epoch can move. What fences is the line's own silence, timed in its thread: a beat
that failed, an epoch moved on, or no answer for ``FENCE_AFTER`` s (``lease_rules``, the
times on ``time.monotonic``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import attrs
import trio

from wa_trio.core.lease_rules import FENCE_AFTER, PING_EVERY, must_fence
from wa_trio.stores.postgres import LeaseConnection, LeaseLines, StoreError
from wa_trio.stores.postgres.leases import LeaseLine


@attrs.define(eq=False)
class Beat:
    """One held lease's heartbeat: ``last_good`` (``time.monotonic``) written by its line's
    pump thread; ``lost`` set there too, ``lost_event`` set on the loop."""

    connection: LeaseConnection
    describe: Callable[[], tuple[str | None, str | None]]  # read from the pump thread
    token: trio.lowlevel.TrioToken
    last_good: float = attrs.field(factory=time.monotonic)
    lost: str | None = None  # why it was lost
    lost_event: trio.Event = attrs.field(factory=trio.Event)

    def lose(self, why: str) -> None:
        """From the pump thread: lost, said to the loop."""
        if self.lost is None:
            self.lost = why
            self.token.run_sync_soon(self.lost_event.set)

    async def until_lost(self) -> str:
        """Why the lease is lost: a beat said so, or none answered for ``FENCE_AFTER`` s."""
        while not must_fence(self.last_good, time.monotonic()):
            with trio.move_on_at(trio.current_time() + FENCE_AFTER - self._silent_for()):
                await self.lost_event.wait()
                return self.lost or f"lease of {self.connection.account} lost"
        return (
            f"lease of {self.connection.account} lost: no answer from the store for {FENCE_AFTER} s"
        )

    def _silent_for(self) -> float:
        return time.monotonic() - self.last_good


@attrs.define(eq=False)
class Heartbeats:
    """Beats the leases held on ``lines``: a pump thread per line in use (started on the
    loop, stopped when the line has no lease left or ``run`` is cancelled)."""

    lines: LeaseLines
    _beats: dict[LeaseConnection, Beat] = attrs.field(factory=dict)
    _guard: threading.Lock = attrs.field(factory=threading.Lock)  # _beats, from the pumps
    _pumped: set[LeaseLine] = attrs.field(factory=set)
    #: threads of their own: never queued behind the sends' statements in trio's default
    #: limiter (40 threads, all of them waiting for the pool at a peak); one per line
    _threads: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(math.inf))

    def join(
        self, connection: LeaseConnection, describe: Callable[[], tuple[str | None, str | None]]
    ) -> Beat:
        beat = Beat(connection, describe, trio.lowlevel.current_trio_token())
        with self._guard:
            self._beats[connection] = beat
        return beat

    def leave(self, connection: LeaseConnection) -> None:
        with self._guard:
            self._beats.pop(connection, None)

    async def run(self) -> None:
        stop = threading.Event()
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    with self._guard:
                        lines = {beat.connection.line for beat in self._beats.values()}
                    for line in lines - self._pumped:
                        self._pumped.add(line)
                        nursery.start_soon(self._pump_line, line, stop)
                    await trio.sleep(PING_EVERY)
            finally:
                stop.set()  # each pump ends after its beat in flight

    async def _pump_line(self, line: LeaseLine, stop: threading.Event) -> None:
        try:  # a beat in flight on a cut line is left to its thread (it ends with the line)
            await trio.to_thread.run_sync(
                self._pump, line, stop, limiter=self._threads, abandon_on_cancel=True
            )
        finally:
            self._pumped.discard(line)

    def _pump(self, line: LeaseLine, stop: threading.Event) -> None:
        """In the line's thread: a beat every ``PING_EVERY`` s while it carries a lease."""
        while not stop.is_set():
            started = time.monotonic()
            with self._guard:
                beats = [b for b in self._beats.values() if b.connection.line is line]
            if not beats:
                return
            self._beat(line, beats)
            stop.wait(max(0.0, PING_EVERY - (time.monotonic() - started)))

    @staticmethod
    def _beat(line: LeaseLine, beats: list[Beat]) -> None:
        rows = [(b.connection.account, b.connection.epoch, *b.describe()) for b in beats]
        try:
            kept = line.beat(rows)
        except StoreError as error:
            for beat in beats:
                beat.lose(f"lease of {beat.connection.account} lost: {error.message}")
            return
        now = time.monotonic()
        for beat in beats:
            if beat.connection.account in kept:
                beat.last_good = now
            else:
                beat.lose(
                    f"the lease of account {beat.connection.account} moved past epoch "
                    f"{beat.connection.epoch}"
                )


__all__ = ["Beat", "Heartbeats"]
