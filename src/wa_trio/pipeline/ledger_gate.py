"""The send ledger as the pipeline uses it: calls that hold the job while the disk fails.

A failing disk (full, read-only, gone) must never crash the worker nor let a job be sent
without its ``sending`` row: a call is retried with backoff while the problem is reported on
/healthz (``problem``), and gives up only when a stop began (``Held``: the job stays unacked).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import eliot
import trio

from wa_trio.core.retry import Backoff
from wa_trio.stores.ledger import AsyncLedger, LedgerError, Mark

T = TypeVar("T")


class Held(Exception):
    """A stop began while the job waited for the ledger: leave it unacked."""


class LedgerGate:
    def __init__(self, ledger: AsyncLedger, stopping: trio.Event) -> None:
        self.ledger = ledger
        self._stopping = stopping
        self.problem: str | None = None  # why the ledger cannot be written now

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a ledger call, holding the job while the disk fails (backoff; health red).

        Raises:
            Held: a stop began while the ledger was failing.
        """
        backoff = Backoff(initial=0.5, cap=10.0)
        while True:
            try:
                result = await call()
            except LedgerError as error:
                if self.problem is None:
                    eliot.log_message(
                        message_type="wa_trio:ledger:failing", level="error", error=error.message
                    )
                self.problem = error.message
                if self._stopping.is_set():
                    raise Held from None
                with trio.move_on_after(backoff.next_delay()):
                    await self._stopping.wait()
                continue
            if self.problem is not None:
                eliot.log_message(message_type="wa_trio:ledger:recovered")
                self.problem = None
            return result

    async def flush(self, marks: list[Mark], *, give_up: bool = False) -> None:
        """Commit ``marks`` (then empty the list): retried while the disk fails, unless a stop
        began (or ``give_up``: one try); what could not be recorded is logged."""
        if not marks:
            return
        pending = list(marks)
        try:
            if give_up:
                await self.ledger.step(pending, [])
            else:
                await self.call(lambda: self.ledger.step(pending, []))
        except (LedgerError, Held):
            eliot.log_message(
                message_type="wa_trio:ledger:unrecorded", level="error", jobs=len(pending)
            )
        del marks[: len(pending)]
