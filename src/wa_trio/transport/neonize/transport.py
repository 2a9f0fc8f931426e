"""The real WhatsApp transport: neonize (whatsmeow) in worker threads, driven from trio.

Threads and trio:
- every blocking neonize call runs in ``trio.to_thread.run_sync``; sends, look-ups, presence and
  pair codes share a ``CapacityLimiter(1)``. They are abandoned on cancel: whatsmeow may wait its
  full request timeout for an answer and the shutdown grace must still end the worker. That is
  safe only because the pipeline committed the job's ``sending`` row before calling ``send``:
  a restart treats an abandoned send as ambiguous and counts it (docs/reliability.md);
- ``client.connect()`` blocks for the whole session (whatsmeow returns only after ``stop()``,
  also after LoggedOut, StreamReplaced, TemporaryBan, ClientOutdated or ConnectFailure, when it
  stops reconnecting by itself): it runs in a thread abandoned on cancel, and on such a terminal
  event the transport stops the client (bounded) so the watchdog can go on. After a ``connect()``
  that raised, the client is stopped too before backing off (some events end ``connect()`` while
  the Go client keeps running);
- whatsmeow emits six QR codes (~160 s), then stops silently: no new code for
  ``QR_STALE_AFTER`` s restarts the login (and allows a new pair code): ``login.py``;
- each ``connect()`` leaks one fd in neonize 0.5.2: past ``MAX_CONNECTS`` attempts the transport
  gives up (``TransportError``) so the supervisor restarts the process cleanly (docs/login.md);
- neonize calls our handlers on Go-owned threads. They touch no trio object: they turn the event
  into a ``Signal`` (``events.py``) and hand it to trio with ``TrioToken.run_sync_soon``; state
  changes happen on the trio thread only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

import attrs
import eliot
import trio

from wa_trio.config.redact import redact_url
from wa_trio.config.settings import Settings
from wa_trio.core.errors import NotConnectedError, SendError, TransportError
from wa_trio.core.retry import Backoff
from wa_trio.log import Redactor
from wa_trio.stores import open as stores
from wa_trio.transport import ConnectionState, OutgoingMessage, SendResult
from wa_trio.transport.inbound import InboundMessage
from wa_trio.transport.neonize.events import TERMINAL, event_not_encodable
from wa_trio.transport.neonize.go_maps import LoginReads, connect_registered, stop_guarded
from wa_trio.transport.neonize.handlers import GoThreadHandlers
from wa_trio.transport.neonize.library import (
    linked_number,
    neonize_errors,
    new_client,
    prepare_session_dir,
    proxy_settings,
    tighten_session_files,
)
from wa_trio.transport.neonize.login import LoginDriving, LoginInfo
from wa_trio.transport.neonize.sending import NeonizeSender, open_numbers
from wa_trio.transport.neonize.store_connects import STORE_CONNECTS
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.states import Signal, next_state
from wa_trio.transport.upload_cache import UploadCache

NUMBER_CACHE_TTL = 7 * 86400.0
STOP_TIMEOUT = 5.0
STOP_RETRY = 1.0  # seconds between stops of a client whose connect() has not returned
QR_STALE_AFTER = 65.0  # no new QR code for this long while waiting for login: restart it
MAX_CONNECTS = 500  # one leaked fd a connect (neonize 0.5.2): restart the process before 1024
_STABLE_AFTER = 60.0  # a session that lasted this long resets the reconnect backoff


@attrs.frozen
class NeonizeStatistics:
    state: ConnectionState
    attempts: int  # connect() calls so far
    qr_count: int


class NeonizeTransport(LoginDriving, GoThreadHandlers):
    """Transport over one linked WhatsApp account (see module docstring)."""

    name = "neonize"
    cloud_templates = False

    def __init__(
        self,
        settings: Settings,
        redactor: Redactor,
        *,
        client_factory: Callable[[str], Any] = new_client,
        backoff: Backoff | None = None,
        qr_out: TextIO | None = None,
        on_receipt: Callable[[ReceiptInfo], None] | None = None,
        on_inbound: Callable[[InboundMessage], None] | None = None,
        qr_stale_after: float = QR_STALE_AFTER,
        max_connects: int = MAX_CONNECTS,
        abandon_after: float = STOP_TIMEOUT * 2,
    ) -> None:
        self.settings = settings
        self.redactor = redactor
        self.client_factory = client_factory
        self.backoff = backoff or Backoff(initial=1.0, cap=120.0)
        self.qr_out = qr_out if qr_out is not None else sys.stderr
        self.on_receipt = on_receipt
        self.on_inbound = on_inbound
        #: told the kind of every callback that raised (the app counts them in
        #: wa_trio_callback_errors_total{kind})
        self.on_callback_error: Callable[[str], None] = lambda _kind: None
        self._abandon_after = abandon_after
        self._connect_scope = trio.CancelScope()  # the connect() in progress
        self._connect_done = trio.Event()  # set when that connect() returned
        self._connect_done.set()  # (none under way yet)
        self.events_lost = 0  # connects ended by an event goneonize could not encode
        self.stop_retries = 0  # stops sent again because connect() had not returned
        self.abandoned = 0  # connect() threads left behind (their client ignored stop())
        self.login = LoginInfo()
        self.transitions: list[tuple[ConnectionState, ConnectionState, str]] = []
        self.connect_attempts = 0
        self.store_connects = STORE_CONNECTS  # process-wide (tests give their own)
        self._state = ConnectionState.CONNECTING
        self._connected = trio.Event()
        self._may_reconnect = True
        self._relogin = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._client: Any = None
        self._limiter = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None
        self._registered = trio.Event()  # the client being connected wrote neonize's maps
        self._reads: LoginReads | None = None  # its map reads after the dial or the login
        self._pair_requested = False
        self._qr_stale_after = qr_stale_after
        self._max_connects = max_connects
        self._last_code_at = 0.0
        self._problem: str | None = None  # why only an operator (or time) can bring it back
        self.banned_until = 0.0  # Unix time a temporary ban ends (0: not banned)
        self.failures_in_a_row = 0  # connects that never reached WhatsApp (restart budget)
        self._reached = False  # this connect reached WhatsApp (connected, or a login code)
        self.sending = NeonizeSender(settings, redactor, self._limiter)

    def statistics(self) -> NeonizeStatistics:
        return NeonizeStatistics(self._state, self.connect_attempts, self.login.qr_count)

    # ------------------------------------------------------------------------------ state

    @property
    def state(self) -> ConnectionState:
        return self._state

    async def wait_connected(self) -> None:
        while self._state is not ConnectionState.CONNECTED:
            await self._connected.wait()

    def apply(self, signal: Signal) -> None:
        """Apply one signal (trio thread only)."""
        if signal.kind != "connecting":
            self._registered.set()  # the client is running: its maps are written
        transition = next_state(self._state, signal)
        old = self._state
        self._state = transition.state
        if signal.kind in {"connected", "pair_success", "connecting"}:
            self._may_reconnect = True
        self._may_reconnect = self._may_reconnect and transition.may_reconnect
        if signal.kind == "pair_success" and signal.detail:
            self.login.linked_as = "+" + signal.detail
        if self._state in {ConnectionState.CONNECTED, ConnectionState.WAITING_FOR_LOGIN}:
            self._reached = True
            self.failures_in_a_row = 0
        if signal.kind == "temporary_ban":
            self.banned_until = time.time() + signal.seconds if signal.seconds > 0 else 0.0
        stuck = self._state in {ConnectionState.BANNED, ConnectionState.FAILED} or signal.kind in {
            "stream_replaced",
            "client_outdated",
        }
        if transition.loud and stuck:
            self._problem = transition.loud  # only an operator (or a ban's end) brings it back
        elif self._state is ConnectionState.CONNECTED:
            self._problem = None
            self.banned_until = 0.0
        if self._state is ConnectionState.CONNECTED:
            self.login.qr = None
            self.login.pair_code = None
            self.login.linked_as = linked_number(self._client) or self.login.linked_as
            self._connected.set()
        elif self._connected.is_set():
            self._connected = trio.Event()
        self._announce(old, signal, transition.loud)
        if signal.kind in TERMINAL and self._nursery is not None:
            # whatsmeow stopped reconnecting but connect() keeps blocking: end it, so the
            # watchdog reaches its re-login wait or its back-off
            self._nursery.start_soon(partial(self._stop_client, until_returned=STOP_TIMEOUT * 2))

    def _announce(self, old: ConnectionState, signal: Signal, loud: str | None) -> None:
        """A state change in the log; what needs an operator on stderr too."""
        if old is not self._state:
            self.transitions.append((old, self._state, signal.kind))
            eliot.log_message(
                message_type="wa_trio:whatsapp:state",
                old=old.value,
                new=self._state.value,
                signal=signal.kind,
                reason=signal.reason or None,
                detail=signal.detail[:200] or None,
            )
        if loud:
            eliot.log_message(
                message_type="wa_trio:whatsapp:attention",
                level="error",
                state=self._state.value,
                message=loud,
            )
            print(
                f"wa-trio: WHATSAPP {self._state.value.upper()}: {loud}",
                file=sys.stderr,
                flush=True,
            )

    def health_problem(self) -> str | None:
        """Stream replaced, a temporary ban, the restart budget spent, an outdated client: red
        on /healthz with the reason. A logged-out device is not: it waits for /login, and
        /readyz reports it."""
        return self._problem

    # -------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        session = self.settings.session_path
        await trio.to_thread.run_sync(
            partial(prepare_session_dir, session, sqlite=stores.postgres(self.settings) is None)
        )
        self.sending.numbers = await trio.to_thread.run_sync(
            open_numbers, self.settings, NUMBER_CACHE_TTL
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_code_freshness)
                task_status.started()
                await self._watchdog()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_client()
                if self.sending.numbers is not None:
                    self.sending.numbers.close()

    async def _watchdog(self) -> None:
        database = await trio.to_thread.run_sync(stores.session_database, self.settings)
        budget = await trio.to_thread.run_sync(stores.session_connect_budget, self.settings)
        self.store_connects.bound(budget)
        while True:
            if not self._may_reconnect:
                eliot.log_message(
                    message_type="wa_trio:whatsapp:waiting_for_operator", state=self._state.value
                )
                with trio.move_on_after(self._until_ban_ends()):
                    await self._relogin.wait()
                self._relogin = trio.Event()
                await self._stop_client()
                self._client = None
                self._may_reconnect = True
                self.failures_in_a_row = 0
                self._problem = None
            if self.connect_attempts >= self._max_connects:
                raise TransportError(
                    f"{self.connect_attempts} connection attempts in this process; each leaks a "
                    "file descriptor in neonize, so the worker exits for a clean restart"
                )
            if self._client is None:
                self._client = await trio.to_thread.run_sync(self.client_factory, database)
                self.register_handlers(self._client)
            self.store_connects.take()  # PostgreSQL: bounded (store_connects); files: counted
            self.apply(Signal("connecting"))
            self._reached = False
            self.connect_attempts += 1
            self._pair_requested = False
            started = trio.current_time()
            with eliot.start_action(
                action_type="wa_trio:whatsapp:connect",
                attempt=self.connect_attempts,
                proxy=redact_url(self.settings.proxy or "") or None,
            ):
                try:
                    self._connect_done = done = trio.Event()
                    try:
                        with (
                            neonize_errors("connect", code="dial_failed", mask=self.redactor.text),
                            trio.CancelScope() as self._connect_scope,
                        ):
                            self._registered = trio.Event()  # set by the client's first event
                            assert self._nursery is not None
                            connect = partial(
                                self._client.connect, proxy_settings(self.settings.proxy)
                            )
                            assert self._token is not None
                            self._reads = reads = LoginReads(self._token)
                            await connect_registered(
                                self._nursery, connect, self._registered, reads
                            )
                    finally:
                        done.set()
                    self.apply(Signal("disconnected"))
                except SendError as error:
                    if event_not_encodable(error.message):
                        await self._event_lost(error.message)
                    else:
                        self.apply(Signal("dial_failed", detail=error.message[:200]))
                        # some failures end connect() while the Go client keeps running: stop
                        # it before the next attempt, or two clients fight for the session
                        await self._stop_client()
            await trio.to_thread.run_sync(tighten_session_files, self.settings.session_path)
            if trio.current_time() - started > _STABLE_AFTER:
                self.backoff.reset()
            if not self._reached and self._may_reconnect:
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= self.settings.connect_max_failures:
                    self.apply(
                        Signal(
                            "failed", detail=f"{self.failures_in_a_row} failed connects in a row"
                        )
                    )
            if not self._may_reconnect:
                continue
            delay = self.backoff.next_delay()
            eliot.log_message(message_type="wa_trio:whatsapp:reconnect_in", seconds=round(delay, 3))
            with trio.move_on_after(delay):
                await self._relogin.wait()

    async def _event_lost(self, message: str) -> None:
        """A ``server-error`` receipt ended connect() (``events.event_not_encodable``): whatsmeow
        is still connected but no event reaches us any more. Stop that client and connect again
        at once: not a failed dial, no back-off, the state says disconnected meanwhile."""
        self.events_lost += 1
        eliot.log_message(
            message_type="wa_trio:whatsapp:event_lost", error=message[:200], lost=self.events_lost
        )
        self._reached = True  # it had reached WhatsApp: not a failed connect
        self.apply(Signal("disconnected"))
        await self._stop_client()
        self.backoff.reset()

    def _until_ban_ends(self) -> float:
        """Seconds to wait before reconnecting by itself: a temporary ban's rest; otherwise
        never (an operator acts)."""
        if self._state is ConnectionState.BANNED and self.banned_until > 0:
            return max(0.0, self.banned_until - time.time())
        return float("inf")

    async def _stop_client(self, *, until_returned: float = 0.0) -> None:
        """Stop the client (a writer of neonize's maps). With ``until_returned``: stop again
        every ``STOP_RETRY`` seconds, for at most that long, until its ``connect()`` returned
        (a stop that came before goneonize's ``Neonize`` wrote the client's ``StopSignal``
        cancels nothing, main.go). Then neonize's finalizer is detached: a dropped client
        would otherwise call Go's ``Stop`` again from the garbage collector, outside the
        guard (client.py ``NewClient.__init__``: ``weakref.finalize(self, _release_ffi)``)."""
        client = self._client
        if client is None:
            return
        await self._stop_once(client)
        done = self._connect_done
        with trio.move_on_after(until_returned):
            while not done.is_set():
                with trio.move_on_after(STOP_RETRY):
                    await done.wait()
                if not done.is_set():
                    self.stop_retries += 1
                    await self._stop_once(client)
        finalizer = getattr(client, "_stop_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        if self._state is ConnectionState.CONNECTED:
            self.apply(Signal("disconnected"))

    async def _stop_once(self, client: Any) -> None:
        await stop_guarded(client, self._reads, STOP_TIMEOUT, mask=self.redactor.text)

    # ------------------------------------------------------------------------------ sending

    async def send(self, message: OutgoingMessage) -> SendResult:
        client = self._client
        if self._state is not ConnectionState.CONNECTED or client is None:
            raise NotConnectedError(f"WhatsApp is {self._state.value}")
        return await self.sending.send(client, message)

    @property
    def uploads(self) -> UploadCache[Any]:
        return self.sending.uploads
