"""neonize events -> what the rest of wa-trio needs (pure: no threads, no trio, no I/O).

``signal_of`` turns a neonize event object (a protobuf message: ``Connected``, ``LoggedOut``,
...) into a state-machine ``Signal``; ``receipt_of`` turns a ``Receipt`` into ``ReceiptInfo``.
They run on Go-owned threads (the handlers call them there), so they touch nothing shared.
Unit-tested with real neonize protobuf events (tests/unit/test_neonize_events.py).
"""

from __future__ import annotations

from typing import Any

from wa_trio.transport.receipts import RECEIPT_KINDS, ReceiptInfo
from wa_trio.transport.states import Signal

#: ConnectFailure and the other events after which whatsmeow stops reconnecting while its
#: ``connect()`` keeps blocking: the transport stops the client so its watchdog can go on.
TERMINAL = frozenset(
    {"logged_out", "stream_replaced", "temporary_ban", "client_outdated", "connect_failure"}
)


def signal_of(event: Any) -> Signal:
    """Turn a neonize event object into a state-machine Signal (runs on a Go thread)."""
    kind = type(event).__name__
    if kind == "Connected":
        return Signal("connected")
    if kind == "Disconnected":
        return Signal("disconnected")
    if kind == "KeepAliveTimeout":
        return Signal("keepalive_timeout", detail=f"errors={event.ErrorCount}")
    if kind == "KeepAliveRestored":
        return Signal("keepalive_restored")
    if kind == "LoggedOut":
        return Signal("logged_out", int(event.Reason), "on_connect" if event.OnConnect else "")
    if kind == "StreamReplaced":
        return Signal("stream_replaced")
    if kind == "TemporaryBan":
        try:
            reason = type(event).TempBanReason.Name(event.Code)
        except ValueError:
            reason = "unknown reason"
        return Signal("temporary_ban", int(event.Code), f"{reason}; expires in {event.Expire}s")
    if kind == "ConnectFailure":
        return Signal("connect_failure", int(event.Reason), str(event.Message)[:200])
    if kind == "ClientOutdated":
        return Signal("client_outdated")
    if kind == "PairStatus":
        if event.Error:
            return Signal("pair_error", detail=str(event.Error)[:200])
        return Signal("pair_success", detail=str(event.ID.User))
    return Signal(kind.lower())


EVENT_NAMES = (
    "ConnectedEv",
    "DisconnectedEv",
    "KeepAliveTimeoutEv",
    "KeepAliveRestoredEv",
    "LoggedOutEv",
    "StreamReplacedEv",
    "TemporaryBanEv",
    "ConnectFailureEv",
    "ClientOutdatedEv",
    "PairStatusEv",
)


def receipt_of(event: Any) -> ReceiptInfo:
    return ReceiptInfo(
        message_ids=tuple(str(i) for i in event.MessageIDs),
        kind=RECEIPT_KINDS.get(int(event.Type), "other"),
        timestamp=float(event.Timestamp),
    )
