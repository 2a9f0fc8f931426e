from __future__ import annotations

import pytest

from wa_trio.core.retry import classify_send_error
from wa_trio.transport import ConnectionState as S
from wa_trio.transport.states import Signal, next_state


@pytest.mark.parametrize(
    ("current", "signal", "state", "may_reconnect"),
    [
        (S.CONNECTING, Signal("qr"), S.WAITING_FOR_LOGIN, True),
        (S.WAITING_FOR_LOGIN, Signal("pair_success", detail="5511"), S.CONNECTING, True),
        (S.CONNECTING, Signal("connected"), S.CONNECTED, True),
        (S.CONNECTED, Signal("disconnected"), S.DISCONNECTED, True),
        (S.CONNECTED, Signal("keepalive_timeout"), S.DISCONNECTED, True),
        (S.DISCONNECTED, Signal("keepalive_restored"), S.CONNECTED, True),
        (S.CONNECTED, Signal("logged_out"), S.LOGGED_OUT, False),
        (S.CONNECTED, Signal("temporary_ban", 101, "3600s"), S.BANNED, False),
        (S.CONNECTED, Signal("stream_replaced"), S.DISCONNECTED, False),
        (S.CONNECTING, Signal("connect_failure", 2), S.LOGGED_OUT, False),
        (S.CONNECTING, Signal("connect_failure", 3), S.BANNED, False),
        (S.CONNECTING, Signal("connect_failure", 8), S.DISCONNECTED, True),
        (S.CONNECTING, Signal("client_outdated"), S.DISCONNECTED, False),
        (S.LOGGED_OUT, Signal("disconnected"), S.LOGGED_OUT, False),
        (S.BANNED, Signal("dial_failed"), S.BANNED, False),
        (S.CONNECTED, Signal("something_new"), S.CONNECTED, True),
    ],
)
def test_transitions(current: S, signal: Signal, state: S, may_reconnect: bool) -> None:
    transition = next_state(current, signal)
    assert transition.state is state
    assert transition.may_reconnect is may_reconnect
    if not may_reconnect and current not in {S.LOGGED_OUT, S.BANNED}:
        assert transition.loud  # the operator is told what to do


@pytest.mark.parametrize(
    ("text", "code", "transient"),
    [
        ("failed to send: websocket not connected", "whatsapp_unavailable", True),
        ("context deadline exceeded", "whatsapp_unavailable", True),
        ("server returned error 503", "whatsapp_unavailable", True),
        ("server returned error 406", "send_rejected", False),
        ("item-not-found", "send_rejected", False),
        ("something nobody has seen", "send_failed", True),
        ("timed out waiting for message send response", "send_timed_out", True),
    ],
)
def test_send_error_classification(text: str, code: str, transient: bool) -> None:
    assert classify_send_error(text) == (code, transient)
