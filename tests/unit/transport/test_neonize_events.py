"""neonize events -> signals -> states, with real neonize protobuf events and no threads."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID

from wa_trio.transport.neonize.events import EVENT_NAMES, TERMINAL, receipt_of, signal_of
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.states import ConnectionState as S
from wa_trio.transport.states import next_state


@pytest.mark.parametrize(
    ("event", "kind", "state"),
    [
        (ConnectedEv(), "connected", S.CONNECTED),
        (DisconnectedEv(), "disconnected", S.DISCONNECTED),
        (KeepAliveTimeoutEv(ErrorCount=2), "keepalive_timeout", S.DISCONNECTED),
        (KeepAliveRestoredEv(), "keepalive_restored", S.CONNECTED),
        (LoggedOutEv(OnConnect=False, Reason=2), "logged_out", S.LOGGED_OUT),
        (StreamReplacedEv(), "stream_replaced", S.DISCONNECTED),
        (
            TemporaryBanEv(Code=TemporaryBanEv.BLOCKED_BY_USERS, Expire=60),
            "temporary_ban",
            S.BANNED,
        ),
        (ConnectFailureEv(Reason=3, Message="banned"), "connect_failure", S.BANNED),
        (ClientOutdatedEv(), "client_outdated", S.DISCONNECTED),
        # linked, but not connected: whatsmeow restarts the stream (515) before Connected
        (PairStatusEv(ID=JID(User="5511988887777")), "pair_success", S.CONNECTING),
        (PairStatusEv(Error="bad code"), "pair_error", S.WAITING_FOR_LOGIN),
    ],
)
def test_each_event_maps_to_its_signal_and_state(event: Any, kind: str, state: S) -> None:
    signal = signal_of(event)
    assert signal.kind == kind
    assert next_state(S.CONNECTED, signal).state is state


def test_terminal_events_are_the_ones_whatsmeow_stops_reconnecting_after() -> None:
    for event in (
        LoggedOutEv(Reason=2),
        StreamReplacedEv(),
        TemporaryBanEv(Code=1),
        ClientOutdatedEv(),
        ConnectFailureEv(Reason=3),
    ):
        assert signal_of(event).kind in TERMINAL
    for event in (ConnectedEv(), DisconnectedEv(), KeepAliveTimeoutEv()):
        assert signal_of(event).kind not in TERMINAL


def test_every_registered_event_name_exists_in_neonize() -> None:
    from neonize import events

    for name in EVENT_NAMES:
        assert getattr(events, name) in events.EVENT_TO_INT, name


def test_receipts_map_to_our_kinds() -> None:
    read = ReceiptEv(MessageIDs=["A", "B"], Type=ReceiptEv.ReceiptType.READ, Timestamp=5)
    assert receipt_of(read) == ReceiptInfo(("A", "B"), "read", 5.0)
    delivered = ReceiptEv(MessageIDs=["C"], Type=ReceiptEv.ReceiptType.DELIVERED, Timestamp=6)
    assert receipt_of(delivered).kind == "delivered"


def test_the_pure_modules_import_without_trio() -> None:
    import subprocess

    code = (
        "import sys, wa_trio.transport.states, wa_trio.transport.receipts; "
        "sys.exit(1 if 'trio' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
