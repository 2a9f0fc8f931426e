"""neonize's client maps, guarded (issue 27, item 9; evidence in docs/decisions.md).

goneonize (``goneonize/main.go`` in neonize 0.5.2) keeps every client of the process in plain
Go maps (``clients``, ``StopSignal``, ``eventChannel``), written without a lock when a client
starts (``Neonize``) and stops (``Stop``) and read by every other call. Two accounts starting or
stopping at once abort the whole process ("fatal error: concurrent map writes", seen here with
20 accounts); a read during a write can too. So, process-wide (``GO_MAPS``): a start or a stop
is a *writer* (alone), everything that reads a *reader* (together), writers first. All our
neonize calls are dispatched from the one trio loop, so a trio-side guard is enough. Where the
Go side reads or writes:

- every exported call (``SendMessage``, ``Upload``, ``IsOnWhatsApp``, ...) reads
  ``clients[id]`` on its first line and never again: ``go_call`` holds a reader only for the
  call's first ``ENTRY_HOLD`` seconds (or until it returns), so a 75 s send or a long upload
  no longer keeps another account's start or stop waiting;
- ``Neonize`` writes ``StopSignal``, ``eventChannel`` and ``clients`` before it dials
  (``connect_registered``: a writer until the client says anything, or ``REGISTER_WINDOW``);
- after the dial (logged-in session) or after the QR channel closes (a login), ``Neonize``
  enters ``CallbackFunction``, which reads ``eventChannel[id]`` and ``clients[id]``
  (``FetchMe``) and then calls back with event 0 (the account's "me"). ``LoginReads`` holds a
  reader from the end of the writer's window until that call back (or ``connect()``
  returned, or ``READS_WINDOW``), except while QR codes are shown; the QR channel's last status
  call back, made on the Go thread just before those reads, blocks until it holds a reader
  again. Every event reaches Python through ``CallbackFunction`` after those reads, so any
  event gives the reader back; so does a stop of that client (a writer that must not wait
  for its own client's reads).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import eliot
import outcome
import trio

from wa_trio.core.errors import SendError
from wa_trio.transport.neonize.library import neonize_errors

REGISTER_WINDOW = 3.0  # at most this long a starting client holds neonize's maps as a writer
#: at most this long a dial holds a reader for the reads after it (whatsmeow's own dial and
#: handshake timeouts are shorter; other accounts' starts and stops wait meanwhile)
READS_WINDOW = 30.0
ENTRY_HOLD = 1.0  # a call's reader hold: the Go export reads the map on entry, well within this
#: a stop of a client whose connect() just began waits at most this long for its map reads
#: (goneonize reads them right after the dial; a stop meanwhile deletes under them)
SETTLE_BEFORE_STOP = 2.0


class GoMaps:
    def __init__(self) -> None:
        self._changed = trio.Event()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def acquire_read(self) -> None:
        """A reader's ticket (``release_read`` gives it back; trio thread only)."""
        while self._writing or self._writers_waiting:
            await self._changed.wait()
        self._readers += 1

    def release_read(self) -> None:
        self._readers -= 1
        self._notify()

    @property
    def writing_now(self) -> bool:
        return self._writing

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        await self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            while self._writing or self._readers:
                await self._changed.wait()
        finally:
            self._writers_waiting -= 1
            self._notify()  # a cancelled writer may have held readers back
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            self._notify()


GO_MAPS = GoMaps()


async def go_call(
    fn: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> Any:
    """A neonize call that reads neonize's client maps (anything but a start or a stop), in a
    worker thread (abandoned on cancel: a Go call cannot be interrupted).

    The thread takes its ``limiter`` token first (one call per account at a time), then waits
    for a reader's ticket, which is held for the call's first ``ENTRY_HOLD`` seconds only."""
    started, done = trio.Event(), trio.Event()
    go_ahead = threading.Event()
    called_off = False
    token = trio.lowlevel.current_trio_token()

    def body() -> Any:
        token.run_sync_soon(started.set)
        go_ahead.wait()
        if called_off:  # cancelled before it held a ticket: never entered Go
            return None
        return fn(*args)

    async def enter() -> None:
        await started.wait()
        async with GO_MAPS.reading():
            go_ahead.set()
            with trio.move_on_after(ENTRY_HOLD):
                await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(enter)
        try:
            # the call's outcome leaves the nursery as it is (an error raised in the nursery's
            # body would come out wrapped in an ExceptionGroup)
            result: outcome.Outcome[Any] = await outcome.acapture(
                partial(trio.to_thread.run_sync, body, limiter=limiter, abandon_on_cancel=True)
            )
        finally:
            called_off = not go_ahead.is_set()
            go_ahead.set()
            done.set()
            nursery.cancel_scope.cancel()
    return result.unwrap()


async def go_stop(client: Any, *, bound: float = 5.0) -> None:
    """``client.stop()`` in a worker thread, for a caller holding the writer. Abandoned on
    cancel, but the caller's writer is kept (shielded, at most ``bound`` seconds) until the
    thread returned: an abandoned Stop still deleting from the maps must not meet the next
    writer or a reader."""
    returned = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def stop() -> None:
        try:
            client.stop()
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(returned.set)

    try:
        await trio.to_thread.run_sync(stop, abandon_on_cancel=True)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(bound):
            await returned.wait()


async def stop_guarded(
    client: Any, reads: LoginReads | None, limit: float, *, mask: Callable[[str], str]
) -> None:
    """Stop ``client`` as a writer of the maps, within ``limit`` seconds; what fails is logged. A
    connect just begun does its map reads first (``LoginReads.settled``, at most
    ``SETTLE_BEFORE_STOP``), and its own reader never holds its stop back."""
    if reads is not None:
        with trio.move_on_after(SETTLE_BEFORE_STOP):
            await reads.settled.wait()
        reads.let_go()
    with trio.move_on_after(limit) as scope:
        try:
            with neonize_errors("stop", code="stop_failed", mask=mask):
                async with GO_MAPS.writing():  # Stop deletes from neonize's client maps
                    await go_stop(client, bound=limit)
        except SendError as error:
            eliot.log_message(message_type="wa_trio:whatsapp:stop_failed", error=error.message)
    if scope.cancelled_caught:
        eliot.log_message(message_type="wa_trio:whatsapp:stop_timed_out", seconds=limit)


class LoginReads:
    """The reader hold around ``CallbackFunction``'s map reads for one ``connect()`` (see the
    module docstring). ``go_thread_status`` and ``go_thread_me`` run on Go threads."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._held = False
        self._gone = trio.Event()
        self.reads_seen = 0  # event-0 call backs (the tests count them)
        self.qr_shown = False  # a QR code came: the reads wait for the QR channel's end
        #: set once nothing of this connect reads the maps soon: its reads are done (an event
        #: came) or wait for a login (a QR code came); a stop waits for it, bounded
        self.settled = trio.Event()

    async def hold(self) -> None:
        if not self._held:
            await GO_MAPS.acquire_read()
            self._held = True
            self._gone = trio.Event()

    async def until_let_go(self) -> None:
        await self._gone.wait()

    def let_go(self) -> None:
        """Trio thread: give the ticket back (a QR code shown, the reads done, connect ended,
        the client stopped)."""
        if self._held:
            self._held = False
            GO_MAPS.release_read()
            self._gone.set()

    def shown_qr(self) -> None:
        """Trio thread: a QR code came; nothing is read until the QR channel ends."""
        self.qr_shown = True
        self.settled.set()
        self.let_go()

    def go_thread_status(self) -> None:
        """The QR channel's status call back (Go thread, just before the reads): blocks it
        until a reader's ticket is held."""
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run(self.hold, trio_token=self._token)

    def go_thread_me(self) -> None:
        """Any event through ``Event.execute`` (Go thread): ``CallbackFunction`` delivers them,
        event 0 first, only after its reads; the ticket goes back."""
        self.reads_seen += 1
        if self.reads_seen > 1 and not self._held:  # the reads were done and said already
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._done_reading)

    def _done_reading(self) -> None:
        self.settled.set()
        self.let_go()


async def connect_registered(
    nursery: trio.Nursery, connect: Callable[[], Any], registered: trio.Event, reads: LoginReads
) -> None:
    """Run ``connect`` (neonize's blocking connect, for as long as the connection lives) in a
    worker thread as a writer of neonize's client maps until the client registered itself:
    ``connect`` returned, or ``registered`` was set (the client said anything: an event), or
    ``REGISTER_WINDOW`` passed; then as a reader (``reads``) until its event 0 (the map reads
    after the dial or the login are done). The holds run in ``nursery``."""

    async def hold(*, task_status: trio.TaskStatus[None]) -> None:
        async with GO_MAPS.writing():
            task_status.started()
            # shielded: a start cancelled while its abandoned thread may still be in Neonize
            # (writing the maps) keeps the writer, so the stop that follows cannot meet it
            with trio.CancelScope(shield=True), trio.move_on_after(REGISTER_WINDOW):
                await registered.wait()
        if not (returned.is_set() or reads.reads_seen or reads.qr_shown):
            await reads.hold()  # given back at event 0, a QR code, or connect() returning
            if not returned.is_set():
                with trio.move_on_after(READS_WINDOW):  # bounded: other accounts wait
                    await reads.until_let_go()
            reads.let_go()

    returned = trio.Event()
    abandoned = False
    await nursery.start(hold)
    try:
        # a limiter of its own: connect() holds its thread for the session's whole life, and
        # 40 accounts on trio's default limiter (40 tokens) stalled every other to_thread
        # call of the process (sends 5 s late, a shutdown of 2 min 13 s; issue 27)
        try:
            await trio.to_thread.run_sync(
                connect, abandon_on_cancel=True, limiter=trio.CapacityLimiter(1)
            )
        except trio.Cancelled:
            abandoned = True
            raise  # abandoned: its thread may still be about to read the maps
        except BaseException:
            reads.settled.set()  # connect() itself ended: nothing of it reads any more
            raise
        reads.settled.set()
    finally:
        returned.set()
        if not abandoned:  # else the writer is kept until the client registered (bounded)
            registered.set()
        reads.let_go()


__all__ = [
    "ENTRY_HOLD",
    "GO_MAPS",
    "READS_WINDOW",
    "REGISTER_WINDOW",
    "GoMaps",
    "LoginReads",
    "connect_registered",
    "go_call",
    "go_stop",
    "stop_guarded",
]
