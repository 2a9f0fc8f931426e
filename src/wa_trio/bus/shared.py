"""AMQP connections shared by the accounts of one process (issue 34): channels, not a
connection per account and task.

A process of several accounts (``accounts.multi``) opens a ``SharedConnections`` in its root
nursery and marks each account's task with its group (``share``). From then on every
long-lived broker user in that task and its children (the pipeline, the queue monitor, status
and inbound events, the pool router, the HTTP API's publisher) borrows one of the process's
connections through ``bus.reconnect.keep_connected`` instead of opening its own. Nothing else
changes for them: a borrow is a connection they open channels on; its loss is a
``BrokerError`` and the same reconnect loop as before.

- **Two roles.** Consumers (jobs, acks, the DLQ and retry copies, the monitor's passive
  declares) are on ``jobs`` connections, publishers of events and API jobs on ``events``
  connections: RabbitMQ blocks a publishing connection under a memory or disk alarm, and a
  blocked connection must not hold back the acks that would drain the queues (RabbitMQ's own
  advice: publishers and consumers on separate connections).
- **Groups.** ``ACCOUNTS_PER_CONNECTION`` accounts share a pair (an account opens about a dozen
  channels; a broker's default ``channel_max`` is 2,047), so 200 accounts hold 8 connections.
- **Owned, lazily opened, kept.** Each connection is a task of the hub's nursery, opened when
  first borrowed (a process whose accounts all stand by holds none) and kept open; when it
  fails, every borrow on it is cancelled and raised as ``BrokerError`` in its own task (each
  borrower's loop backs off and borrows again), and the hub opens it again when asked.
- **Isolation.** A channel error (a queue missing, a precondition) closes that channel only,
  raised in the borrower like before (``BrokerError``); the others go on. A refusal of our
  login or vhost is raised in every borrower waiting, as it was from their own connect.

Why a context variable instead of an argument through every constructor, and what else was
measured: docs/decisions.md ("Shared AMQP connections").
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import AsyncIterator
from typing import Literal

import attrs
import eliot
import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, BrokerError, Connection
from wa_trio.core.errors import WaTrioError
from wa_trio.core.retry import Backoff

Role = Literal["jobs", "events"]

#: accounts per pair of connections
ACCOUNTS_PER_CONNECTION = 50


@attrs.define(eq=False)
class _Shared:
    """One connection of the hub and the borrows on it (trio thread only)."""

    address: BrokerAddress
    label: str
    connection: Connection | None = None
    failure: WaTrioError | None = None  # a refusal: raised in whoever borrows next
    borrows: set[trio.CancelScope] = attrs.field(factory=set)
    opened: int = 0
    _wanted: trio.Event = attrs.field(factory=trio.Event)
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _backoff: Backoff = attrs.field(factory=lambda: Backoff(initial=0.5, cap=15.0))

    async def run(self) -> None:
        """Open the connection when wanted and hold it; after a loss, back off and open again."""
        while True:
            await self._wanted.wait()
            delay = 0.0
            try:
                async with amqp.connect(self.address) as connection:
                    self._up(connection)
                    await trio.sleep_forever()
            except BrokerError as error:
                delay = self._backoff.next_delay()
                eliot.log_message(
                    message_type="wa_trio:amqp:shared_lost",
                    connection=self.label,
                    reason=str(error)[:300],
                    retry_in=round(delay, 3),
                )
            except WaTrioError as error:  # refused (login, vhost): say it to the borrowers
                self.failure, delay = error, self._backoff.next_delay()
            finally:
                self._down()
            await trio.sleep(delay)

    def _up(self, connection: Connection) -> None:
        self.connection, self.failure = connection, None
        self.opened += 1
        self._backoff.reset()
        self._notify()

    def _down(self) -> None:
        self.connection = None
        self._wanted = trio.Event()  # reopened when borrowed again
        for scope in self.borrows:
            scope.cancel()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_open(self) -> Connection:
        while True:
            self._wanted.set()
            if self.connection is not None and self.connection.open:
                return self.connection
            if self.failure is not None:
                raise self.failure
            await self._changed.wait()

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[Connection]:
        connection = await self._wait_open()
        with trio.CancelScope() as scope:
            self.borrows.add(scope)
            try:
                yield connection
            except BaseException as error:
                if not connection.open:  # the connection went: whatever the body saw
                    raise BrokerError(f"{self.address.redacted}: connection lost") from None
                amqp.translate(error, self.address)  # a channel's error: BrokerError
                raise
            finally:
                self.borrows.discard(scope)
        if scope.cancelled_caught:  # cancelled by ``_down``, not from outside
            raise BrokerError(f"{self.address.redacted}: connection lost")


@attrs.frozen
class ConnectionStatistics:
    """The hub's connections (for /metrics and tests)."""

    open: int  # connections up now
    opened: int  # connections opened since the start (reconnects included)
    borrows: int  # borrows on them now (one per connected pipeline, monitor, outbox...)


@attrs.define(eq=False)
class SharedConnections:
    """The process's shared connections to ``address``, ``run`` in its root nursery."""

    address: BrokerAddress
    accounts: int = 1
    _nursery: trio.Nursery | None = None
    _shared: dict[tuple[Role, int], _Shared] = attrs.field(factory=dict)

    @property
    def groups(self) -> int:
        return max(1, math.ceil(self.accounts / ACCOUNTS_PER_CONNECTION))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as self._nursery:
            task_status.started()
            await trio.sleep_forever()

    def _one(self, role: Role, group: int) -> _Shared:
        key = (role, group % self.groups)
        if key not in self._shared:
            if self._nursery is None:
                raise RuntimeError("SharedConnections.run has not started")
            shared = _Shared(self.address, f"{role}-{key[1]}")
            self._nursery.start_soon(shared.run)
            self._shared[key] = shared
        return self._shared[key]

    def borrow(self, role: Role, group: int) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection of ``role`` for the account of ``group`` (see the module docstring)."""
        return self._one(role, group).borrow()

    def statistics(self) -> ConnectionStatistics:
        shared = self._shared.values()
        return ConnectionStatistics(
            open=sum(1 for each in shared if each.connection is not None),
            opened=sum(each.opened for each in shared),
            borrows=sum(len(each.borrows) for each in shared),
        )


@attrs.frozen
class Share:
    """What a task borrows from: the hub and its account's group."""

    hub: SharedConnections
    group: int


#: the shared connections of the current task (None: each user opens its own)
SHARED: contextvars.ContextVar[Share | None] = contextvars.ContextVar("SHARED", default=None)


def share(hub: SharedConnections, group: int) -> contextvars.Token[Share | None]:
    """Mark the current task (and the tasks it starts from now on) as borrowing from ``hub``
    (the token undoes it: ``SHARED.reset``)."""
    return SHARED.set(Share(hub, group))


def connection_for(
    address: BrokerAddress, role: Role
) -> contextlib.AbstractAsyncContextManager[Connection]:
    """A connection to ``address`` for ``role``: borrowed when the task shares (and the
    address is the hub's), else a connection of its own."""
    marked = SHARED.get()
    if marked is not None and marked.hub.address == address:
        return marked.hub.borrow(role, marked.group)
    return amqp.connect(address)


__all__ = [
    "ACCOUNTS_PER_CONNECTION",
    "SHARED",
    "ConnectionStatistics",
    "Role",
    "Share",
    "SharedConnections",
    "connection_for",
    "share",
]
