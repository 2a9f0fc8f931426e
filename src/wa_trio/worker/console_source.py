"""What the operator's console reads and changes (``web/console.py`` renders it): the running
workers' state, the broker's queues, the DLQ (``bus/dlq.py``), the opt-out list (the store
``wa-trio optout`` edits) and one job's story (``events/story.py``). One for the process: a
worker of one account, or the accounts of a multi-account process (by name).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import eliot
import trio

from wa_trio.bus import amqp, dlq
from wa_trio.bus.amqp import BrokerAddress
from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.bus.topology import delay_queues
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.story import Story
from wa_trio.events.story import story_with_letters
from wa_trio.log import mask_phone
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.contacts import OptOut
from wa_trio.transport import Transport
from wa_trio.web.accounts_app import AccountParts
from wa_trio.web.app import ConsumerState, masked_linked
from wa_trio.web.console import AccountRow, QueueRow, QueueSummary, when

RATE_WINDOW = 60.0  # seconds the per-minute rates are measured over (at least)


def _value(parts: AccountParts, name: str) -> float | None:
    return parts.metrics.registry.get_sample_value(name)


def _processed(parts: AccountParts) -> float:
    return sum(
        sample.value
        for family in parts.metrics.jobs_processed.collect()
        for sample in family.samples
    )


@attrs.frozen
class Running:
    """One account's parts the console reads (``web.accounts_app.AccountParts``)."""

    transport: Transport
    metrics: Metrics
    pipeline: ConsumerState
    monitor: BrokerMonitor


class WorkerConsole:
    def __init__(
        self,
        settings: Settings,
        workers: Callable[[], Mapping[str, AccountParts]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._clock = clock
        #: (when, jobs out so far, jobs waiting): the first at start, before any job
        self._samples: deque[tuple[float, float, float | None]] = deque(maxlen=64)
        self._samples.append((clock(), 0.0, None))

    # ------------------------------------------------------------------------------ accounts

    async def accounts(self) -> list[AccountRow]:
        holders = await self._holders()
        running = self._workers()
        return [self._row(name, running.get(name), holders.get(name)) for name in self._names()]

    def _names(self) -> tuple[str, ...]:
        if self.settings.multi_account and not self.settings.account:
            return self.settings.accounts
        return (self.settings.account_name,)

    def _row(self, name: str, parts: AccountParts | None, holder: str | None) -> AccountRow:
        if parts is None:
            return AccountRow(name, "standby", None, None, None, None, None, None, holder, None)
        transport = parts.transport
        multi = len(self._names()) > 1
        login = f"/login?account={name}" if multi else "/login"
        highest = _value(parts, "whatsapp_unanswered_highest")
        limit = _value(parts, "whatsapp_unanswered_limit")
        return AccountRow(
            name=name,
            state=transport.state.value,
            linked=masked_linked(transport),
            pacing_tokens=(
                _rounded(_value(parts, "whatsapp_pacing_tokens"))
                if self.settings.rate_limit is not None
                else None  # pacing off: shown so
            ),
            unanswered_highest=None if highest is None else int(highest),
            unanswered_limit=None if limit is None else int(limit),
            banned_until=when(transport.banned_until) if transport.banned_until else None,
            last_send=_last_send(parts),
            holder=None,
            login_url=login if transport.login_status().linkable else None,
        )

    async def _holders(self) -> dict[str, str]:
        """Accounts a replica holds (PostgreSQL's lease table; nothing on files)."""
        try:
            return await trio.to_thread.run_sync(stores.lease_holders, self.settings)
        except WaTrioError:
            return {}

    # -------------------------------------------------------------------------------- queues

    def _queue_names(self) -> list[tuple[str, str]]:
        """(queue, what it holds): the job queue (with several accounts: the pool's, then each
        account's), each one's retry and wait queues, the DLQ they share."""
        several = len(self._names()) > 1
        owners = [(self.settings, "pool" if several else "jobs")]
        if several:
            owners += [(self.settings.for_account(n), f"account {n}") for n in self._names()]
        names: list[tuple[str, str]] = []
        for settings, role in owners:
            names.append((settings.queue_name, role))
            names += [(d.name, _delay_role(d.name)) for d in delay_queues(settings)]
        names.append((self.settings.dlq_name, "dead letters"))
        return names

    async def queues(self) -> QueueSummary:
        rows: list[QueueRow] = []
        async with amqp.connect(BrokerAddress.from_settings(self.settings)) as connection:
            for name, role in self._queue_names():
                try:
                    async with connection.open_channel() as channel:
                        depth: int | None = await amqp.queue_message_count(channel, name)
                except WaTrioError:
                    depth = None  # not declared (yet): a missing queue closes its channel
                if not depth and role.startswith(("retry", "scheduled")):
                    continue  # an empty delay queue (or one nobody declared): said in a line
                rows.append(QueueRow(name, role, depth))
        waiting = sum(row.depth or 0 for row in rows if row.role != "dead letters")
        return self._summary(tuple(rows), waiting)

    def _summary(self, rows: tuple[QueueRow, ...], waiting: int) -> QueueSummary:
        now = self._clock()
        running = self._workers().values()
        out = sum(_processed(parts) for parts in running)
        self._samples.append((now, out, float(waiting)))
        start = next((s for s in self._samples if now - s[0] <= RATE_WINDOW * 5), None)
        per_out = per_in = None
        window = 0
        if start is not None and now - start[0] >= 1.0:
            span = now - start[0]
            window = round(span)
            per_out = round((out - start[1]) * 60 / span, 1)
            if start[2] is not None:
                per_in = round(max(0.0, per_out + (waiting - start[2]) * 60 / span), 1)
        ages = [_value(parts, "wa_trio_oldest_job_age_seconds") for parts in running]
        known = [age for age in ages if age is not None and age == age]  # NaN: unknown
        oldest = f"{max(known):.0f} s" if known else None
        return QueueSummary(rows, per_in, per_out, oldest, window)

    # -------------------------------------------------------------------------- dead letters

    async def dead_letters(self, limit: int) -> list[dlq.DeadLetter]:
        return await dlq.list_dead_letters(self.settings, limit)

    async def replay(self, code: str | None, key: str | None, limit: int) -> dlq.ReplayReport:
        report = await dlq.replay(self.settings, code=code, message_id=key, limit=limit)
        eliot.log_message(
            message_type="wa_trio:console:replay", code=code, message_id=key, taken=report.replayed
        )
        return report

    async def drop(self, code: str | None, key: str | None, limit: int) -> dlq.ReplayReport:
        report = await dlq.drop(self.settings, code=code, message_id=key, limit=limit)
        eliot.log_message(
            message_type="wa_trio:console:drop", code=code, message_id=key, taken=report.replayed
        )
        return report

    # ------------------------------------------------------------------------------ opt-outs

    async def optouts(self) -> list[OptOut]:
        return await trio.to_thread.run_sync(self._optouts)

    def _optouts(self) -> list[OptOut]:
        store = stores.optout_list(self.settings)
        try:
            return store.optouts()
        finally:
            store.close()

    async def set_optout(self, number: str, add: bool, by: str) -> bool:
        changed = await trio.to_thread.run_sync(self._set_optout, number, add, by)
        eliot.log_message(
            message_type=f"wa_trio:safety:optout_{'add' if add else 'remove'}",
            number=self.shown(number),
            by=by,
            changed=changed,
        )
        return changed

    def _set_optout(self, number: str, add: bool, by: str) -> bool:
        store = stores.optout_list(self.settings)
        try:
            return store.add_optout(number, by) if add else store.remove_optout(number)
        finally:
            store.close()

    def shown(self, number: str) -> str:
        return mask_phone(number, production=self.settings.production)

    # --------------------------------------------------------------------------------- story

    async def story(self, query: str) -> tuple[Story, str | None]:
        return await story_with_letters(self.settings, query)


def console_for(
    settings: Settings,
    transport: Transport,
    metrics: Metrics,
    pipeline: ConsumerState,
    monitor: BrokerMonitor,
    serving: bool,
) -> WorkerConsole | None:
    """The console of a one-account worker that serves HTTP (an account of several has none:
    the process's server has the console of them all)."""
    if not serving:
        return None
    running = {settings.account_name: Running(transport, metrics, pipeline, monitor)}
    return WorkerConsole(settings, lambda: running)


def _delay_role(name: str) -> str:
    kind, _, label = name.rpartition(".")
    return f"retry after {label}" if kind.endswith(".retry") else f"scheduled, {label} hop"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _last_send(parts: AccountParts) -> str | None:
    statistics: Any = parts.pipeline.statistics()
    at = getattr(statistics, "last_sent_at", None)
    return when(at) if at else None


__all__ = ["Running", "WorkerConsole", "console_for"]
