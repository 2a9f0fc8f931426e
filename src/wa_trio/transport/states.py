"""WhatsApp connection states (pure: no neonize, no trio).

The neonize adapter turns each neonize event object into a ``Signal`` (its kind and the few
fields that matter); ``next_state`` decides the new state and whether the watchdog may reconnect.
Kept apart so every transition is tested without the Go library or an event loop.
"""

from __future__ import annotations

import enum

import attrs


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    WAITING_FOR_LOGIN = "waiting_for_login"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    BANNED = "banned"
    FAILED = "failed"  # WHATSAPP_CONNECT_MAX_FAILURES failed connects in a row: an operator acts


#: states an operator must act on (WHATSAPP_FALLBACK=cloud-api sends around them)
STUCK = frozenset({ConnectionState.LOGGED_OUT, ConnectionState.BANNED, ConnectionState.FAILED})

# ConnectFailure.Reason values (neonize's ConnectFailureReason enum)
_LOGGED_OUT_REASONS = {2, 4, 5}  # LOGGED_OUT, MAIN_DEVICE_GONE, UNKNOWN_LOGOUT
_BANNED_REASONS = {3}  # TEMP_BANNED


@attrs.frozen
class Signal:
    """What happened, as the state machine needs it."""

    kind: str  # qr, pair_success, pair_error, connected, disconnected, keepalive_timeout,
    #            keepalive_restored, logged_out, stream_replaced, temporary_ban,
    #            connect_failure, client_outdated, dial_failed, connecting
    reason: int = 0
    detail: str = ""
    seconds: float = 0.0  # temporary_ban: how long it lasts (0: unknown)


@attrs.frozen
class Transition:
    state: ConnectionState
    may_reconnect: bool  # False: stop reconnecting until an operator acts
    loud: str | None = None  # an operator-facing message to log at error level


#: signals whose transition depends on nothing else (a flat table)
_FIXED: dict[str, Transition] = {
    "connecting": Transition(ConnectionState.CONNECTING, True),
    "qr": Transition(ConnectionState.WAITING_FOR_LOGIN, True),
    "pair_error": Transition(ConnectionState.WAITING_FOR_LOGIN, True),
    "connected": Transition(ConnectionState.CONNECTED, True),
    "keepalive_restored": Transition(ConnectionState.CONNECTED, True),
    # linked, but not connected yet: whatsmeow restarts the stream (515) and only a
    # Connected event after that means messages can go out
    "pair_success": Transition(ConnectionState.CONNECTING, True),
    "logged_out": Transition(
        ConnectionState.LOGGED_OUT,
        False,
        "WhatsApp logged this device out (unlinked from the phone). Jobs stay queued. "
        "Link again: open /login or run `wa-trio login`.",
    ),
    "stream_replaced": Transition(
        ConnectionState.DISCONNECTED,
        False,
        "another client connected with this same session (two workers on one account?). "
        "Not reconnecting, to avoid a fight; stop the other one and restart this worker.",
    ),
    "client_outdated": Transition(
        ConnectionState.DISCONNECTED,
        False,
        "WhatsApp says this client version is outdated: upgrade neonize / wa-trio.",
    ),
}


def next_state(current: ConnectionState, signal: Signal) -> Transition:
    """The state after ``signal``; unknown kinds leave the state unchanged."""
    kind = signal.kind
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    if kind in {"disconnected", "keepalive_timeout", "dial_failed"}:
        if current in {ConnectionState.LOGGED_OUT, ConnectionState.BANNED, ConnectionState.FAILED}:
            return Transition(current, False)
        return Transition(ConnectionState.DISCONNECTED, True)
    if kind == "temporary_ban":
        return _banned(signal)
    if kind == "failed":
        return Transition(
            ConnectionState.FAILED,
            False,
            f"{signal.detail or 'too many failed connects in a row'}; not retrying any more "
            "(WHATSAPP_CONNECT_MAX_FAILURES). Jobs stay queued. Check the network, proxy and "
            "session, then POST /login/relogin or run `wa-trio relogin`.",
        )
    if kind == "connect_failure":
        if signal.reason in _LOGGED_OUT_REASONS:
            return next_state(current, Signal("logged_out"))
        if signal.reason in _BANNED_REASONS:
            return next_state(current, Signal("temporary_ban", signal.reason, signal.detail))
        return Transition(ConnectionState.DISCONNECTED, True)
    return Transition(current, True)


def _banned(signal: Signal) -> Transition:
    after = (
        "the worker reconnects by itself when it ends"
        if signal.seconds > 0
        else "restart the worker after the ban ends"
    )
    return Transition(
        ConnectionState.BANNED,
        False,
        f"WhatsApp temporarily banned this account (code {signal.reason}: "
        f"{signal.detail or 'no detail'}). Jobs stay queued, no reconnect until then; "
        f"review pacing (docs/account-safety.md); {after}.",
    )
