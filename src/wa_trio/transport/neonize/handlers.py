"""neonize's handlers on Go-owned threads, and their way into trio (a mixin of
``NeonizeTransport``).

neonize calls the handlers on Go threads. They touch no trio object: each turns its event into
what the rest of wa-trio needs (``events.py``) and hands it to trio with
``TrioToken.run_sync_soon``. Each is a bulkhead twice: on the Go thread (an exception would
reach ctypes) and on the trio thread (an exception in a ``run_sync_soon`` callback is a
``TrioInternalError`` that ends the whole run; issue 26). A received message whose sender is
only a hidden id is resolved through whatsmeow's LID store first (issue 27).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs
import trio

from wa_trio.core.errors import SendError
from wa_trio.log import Redactor, log_contained
from wa_trio.transport.inbound import InboundMessage, e164
from wa_trio.transport.neonize.events import EVENT_NAMES, inbound_of, receipt_of, signal_of
from wa_trio.transport.neonize.go_maps import LoginReads, go_call
from wa_trio.transport.neonize.library import lid_jid, neonize_errors
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.states import Signal


class GoThreadHandlers:
    """The handlers and the trio bridge; the transport provides the attributes below."""

    redactor: Redactor
    on_receipt: Callable[[ReceiptInfo], None] | None
    on_inbound: Callable[[InboundMessage], None] | None
    on_callback_error: Callable[[str], None]
    _token: trio.lowlevel.TrioToken | None
    _nursery: trio.Nursery | None
    _client: Any
    _limiter: trio.CapacityLimiter
    _reads: LoginReads | None  # the connect under way's map reads (go_maps.py)

    def apply(self, signal: Signal) -> None:
        raise NotImplementedError  # the transport's state machine

    def on_qr(self, payload: str) -> None:
        raise NotImplementedError  # the transport's login view

    def _post(self, kind: str, fn: Callable[..., None], *args: Any) -> None:
        """Hand ``fn(*args)`` to the trio thread, inside the callback's bulkhead: an exception
        in a ``run_sync_soon`` callback is a ``TrioInternalError`` that ends the whole run."""
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):  # the worker is shutting down
            token.run_sync_soon(self._guarded, kind, fn, *args)

    def _guarded(self, kind: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - the callback's bulkhead
            self._callback_failed(kind, error)

    def _received(self, message: InboundMessage) -> None:
        """A received message on the trio thread: on to ``on_inbound``, after its sender's
        number is looked up when WhatsApp gave only a hidden id (an opt-out from a LID-only
        sender was dropped before; issue 27)."""
        if message.lid is not None and self._nursery is not None:
            self._nursery.start_soon(self._resolve_lid, message)
        elif self.on_inbound is not None:
            self.on_inbound(message)

    async def _resolve_lid(self, message: InboundMessage) -> None:
        client, lid = self._client, message.lid
        sender = None
        if client is not None and lid is not None:
            try:
                with neonize_errors("lid", code="lid_unknown", mask=self.redactor.text):
                    found = await go_call(
                        client.get_pn_from_lid, lid_jid(lid), limiter=self._limiter
                    )
                if found.Server == "s.whatsapp.net":
                    sender = e164(str(found.User))
            except SendError:  # whatsmeow does not know this LID's number (yet)
                sender = None
        if self.on_inbound is not None:
            self._guarded("message", self.on_inbound, attrs.evolve(message, sender=sender))

    def _callback_failed(self, kind: str, error: BaseException) -> None:
        """Log and count a callback that raised (on whichever thread it ran: eliot and
        prometheus-client are thread-safe)."""
        self.on_callback_error(kind)
        log_contained("wa_trio:neonize:callback_failed", error, kind=kind)

    def register_handlers(self, client: Any) -> None:
        """Register every handler on ``client`` (all before ``connect()``, one per type).

        Each runs on a Go thread and is wrapped: what it raises is logged and counted there
        and never reaches neonize (ctypes would print it) nor trio."""
        from neonize import events

        def bulkhead(kind: str, body: Callable[[Any], None]) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                try:
                    body(event)
                except Exception as error:  # noqa: BLE001 - the callback's bulkhead
                    self._callback_failed(kind, error)

            return handler

        def on_event(event: Any) -> None:
            self._post("event", self.apply, signal_of(event))

        def on_qr(data: bytes) -> None:
            self._post("qr", self.on_qr, data.decode("utf-8", "replace"))

        def on_receipt(event: Any) -> None:
            if self.on_receipt is not None:
                self._post("receipt", self.on_receipt, receipt_of(event))

        def on_message(event: Any) -> None:
            message = inbound_of(event)
            if message is not None and self.on_inbound is not None:
                self._post("message", self._received, message)

        for name in EVENT_NAMES:
            client.event(getattr(events, name))(bulkhead("event", on_event))
        client.event(events.ReceiptEv)(bulkhead("receipt", on_receipt))
        client.event(events.MessageEv)(bulkhead("message", on_message))
        client.event.qr(bulkhead("qr", on_qr))
        self._hook_map_reads(client)

    def _hook_map_reads(self, client: Any) -> None:
        """goneonize reads its client maps just after the QR channel's last status call back
        and just before event 0 (go_maps.py): both call backs run on the Go thread; the first
        waits there for a reader's ticket, the second gives it back. neonize's own status
        call back only prints (client.py ``NewClient.__onLoginStatus``); event 0 only sets
        ``client.me`` (events.py ``Event.execute``), which still runs."""
        execute = client.event.execute

        def on_status(_uuid: Any, _status: Any) -> None:
            try:
                if self._reads is not None:
                    self._reads.go_thread_status()
            except Exception as error:  # noqa: BLE001 - the callback's bulkhead
                self._callback_failed("login_status", error)

        def on_execute(uuid: Any, binary: Any, size: Any, code: Any) -> None:
            try:
                execute(uuid, binary, size, code)
            finally:
                if self._reads is not None:  # event 0 first: the reads are done
                    self._reads.go_thread_me()

        client._NewClient__onLoginStatus = on_status  # read by connect(), as the name it has
        client.event.execute = on_execute


__all__ = ["GoThreadHandlers"]
