"""Driving a login of the neonize transport (a mixin of ``NeonizeTransport``, like the Go-thread
handlers): QR codes out (terminal, log, /login), the pair code, the codes' freshness (whatsmeow
emits six QR codes over ~160 s, then stops silently: no new code for ``qr_stale_after`` seconds
restarts the login), and a re-login after a logout. Trio thread only.
"""

from __future__ import annotations

from functools import partial
from typing import Any, TextIO

import attrs
import eliot
import trio

from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState, LoginStatus
from wa_trio.transport.neonize.go_maps import LoginReads, go_call
from wa_trio.transport.neonize.library import neonize_errors, pair_client, print_qr
from wa_trio.transport.states import Signal


@attrs.define
class LoginInfo:
    qr: str | None = None
    qr_count: int = 0
    pair_code: str | None = None
    linked_as: str | None = None  # the account's number (E.164), once linked


class LoginDriving:
    """The login's half of the transport; the transport provides the attributes below."""

    settings: Settings
    redactor: Redactor
    qr_out: TextIO
    login: LoginInfo
    abandoned: int
    _state: ConnectionState
    _client: Any
    _limiter: trio.CapacityLimiter
    _nursery: trio.Nursery | None
    _relogin: trio.Event
    _pair_requested: bool
    _qr_stale_after: float
    _last_code_at: float
    _abandon_after: float
    _connect_scope: trio.CancelScope
    _connect_done: trio.Event
    _reads: LoginReads | None

    def apply(self, signal: Signal) -> None:
        raise NotImplementedError  # the transport's state machine

    async def _stop_client(self, *, until_returned: float = 0.0) -> None:
        raise NotImplementedError  # the transport's

    def login_status(self) -> LoginStatus:
        return LoginStatus(
            state=self._state,
            linkable=True,
            qr=self.login.qr,
            qr_count=self.login.qr_count,
            pair_code=self.login.pair_code,
            linked_as=self.login.linked_as,
        )

    def on_qr(self, payload: str) -> None:
        """A new QR code (trio thread): terminal block, log, /login."""
        if self._reads is not None:
            self._reads.shown_qr()  # the map reads wait for the QR channel's end
        self.login.qr = payload
        self.login.qr_count += 1
        self._last_code_at = trio.current_time()
        self.apply(Signal("qr"))
        if self.settings.pair_phone:
            if not self._pair_requested and self._nursery is not None:
                self._pair_requested = True
                self._nursery.start_soon(self._request_pair_code)
            return
        print_qr(payload, self.qr_out)
        fields: dict[str, Any] = {"count": self.login.qr_count, "login_page": "/login"}
        if not self.settings.production:
            fields["qr_code"] = payload  # development only: production logs go to shared sinks
        eliot.log_message(message_type="wa_trio:login:qr", **fields)

    async def _request_pair_code(self) -> None:
        phone = self.settings.pair_phone or ""
        client = self._client
        try:
            with neonize_errors("pair code", code="pair_code_failed", mask=self.redactor.text):
                code = await go_call(
                    partial(client.PairPhone, phone.lstrip("+"), True, **pair_client()),
                    limiter=self._limiter,
                )
        except SendError as error:
            self._pair_requested = False
            eliot.log_message(message_type="wa_trio:login:pair_code_failed", error=error.message)
            return
        self.login.pair_code = str(code)
        self._last_code_at = trio.current_time()
        print(
            f"wa-trio: on the phone {self.redactor.phone(phone)}: WhatsApp -> Linked devices -> "
            f"Link with phone number, enter code {code}",
            file=self.qr_out,
            flush=True,
        )
        eliot.log_message(
            message_type="wa_trio:login:pair_code",
            phone=self.redactor.phone(phone),
            login_page="/login",
        )

    def request_relogin(self) -> None:
        """After a logout: start a fresh login (from /login or the CLI)."""
        self._relogin.set()

    async def _watch_code_freshness(self) -> None:
        """While waiting for a login, restart it when no new QR / pair code came for
        ``qr_stale_after`` seconds: whatsmeow stops emitting codes after ~160 s, silently."""
        while True:
            await trio.sleep(min(5.0, self._qr_stale_after / 4))
            if self._state is not ConnectionState.WAITING_FOR_LOGIN:
                continue
            idle = trio.current_time() - self._last_code_at
            if idle >= self._qr_stale_after:
                eliot.log_message(
                    message_type="wa_trio:login:codes_expired", idle_seconds=round(idle, 1)
                )
                self.login.qr = None
                self.login.pair_code = None
                self._last_code_at = trio.current_time()
                await self._restart_login()

    async def _restart_login(self) -> None:
        """Stop the client waiting for a login; the watchdog starts a new one. In this phase
        neonize's Go side may wait for a device id for ever and ignore ``stop()`` (issue 27):
        when ``connect()`` has not returned ``abandon_after`` seconds later, its thread is
        abandoned (it counts towards MAX_CONNECTS, the restart bound) and the next login
        starts on a new client, with a new key on the Go side."""
        connecting, done = self._connect_scope, self._connect_done
        await self._stop_client(until_returned=self._abandon_after)  # stopped again till then
        if not done.is_set():
            self.abandoned += 1
            eliot.log_message(
                message_type="wa_trio:login:connect_abandoned",
                seconds=self._abandon_after,
                abandoned=self.abandoned,
            )
            self._client = None  # a new client (and Go-side key) for the next login
            connecting.cancel()


__all__ = ["LoginDriving", "LoginInfo"]
