"""Events through neonize's own dispatch (issues 26 and 27): ``neonize.events.Event.execute``,
the function the Go side calls with a pointer to the protobuf bytes it encoded, run on a foreign
thread as Go runs it. Only the client around it is the double (tests/fakes.py).

Before: the first received message (``MessageInfo.Timestamp`` in milliseconds, goneonize
``utils/encoder.go`` ``EncodeMessageInfo``: ``Timestamp.UnixMilli()``) raised in a
``run_sync_soon`` callback and trio ended the whole run (``TrioInternalError``).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from neonize.events import EVENT_TO_INT, Event
from neonize.proto.Neonize_pb2 import JID, Message, MessageInfo, MessageSource, Receipt
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import wait_for
from wa_trio.config.settings import Settings
from wa_trio.transport.inbound import InboundMessage, as_event
from wa_trio.transport.neonize import NeonizeTransport, ReceiptInfo


def as_go_encodes(message: Any) -> Any:
    """Every proto2 ``required`` field set, as goneonize's encoders set them (zero values where
    Go has nothing): neonize's ``FromString`` refuses a message without them."""
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            if field.message_type is not None:
                for item in getattr(message, field.name):
                    as_go_encodes(item)
            continue
        if field.message_type is not None:
            if field.is_required or message.HasField(field.name):
                getattr(message, field.name).SetInParent()
                as_go_encodes(getattr(message, field.name))
        elif field.is_required and not message.HasField(field.name):
            setattr(message, field.name, field.default_value)
    return message


def execute(client: FakeClient, event: Any) -> None:
    """What the Go side does: encode the event, call ``Event.execute`` with its address and
    size, on a thread that is not trio's."""
    data = as_go_encodes(event).SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    code = EVENT_TO_INT[type(event)]
    dispatch = client.event.execute  # neonize's own Event (with our hook around it)
    thread = threading.Thread(target=dispatch, args=(0, ctypes.addressof(buffer), len(data), code))
    thread.start()
    thread.join()


def _transport(settings: Settings, clients: list[FakeClient]) -> tuple[NeonizeTransport, list[str]]:
    transport = fake_neonize_transport(settings, clients)
    factory = transport.client_factory

    def with_real_dispatch(database: str) -> Any:
        client = factory(database)
        client.event = Event(client)  # neonize's, not the double's
        return client

    transport.client_factory = with_real_dispatch
    failures: list[str] = []
    transport.on_callback_error = failures.append
    return transport, failures


def message_event(timestamp_ms: int, text: str = "Pode ser amanhã?") -> Message:
    person = JID(User="5511988887777", Server="s.whatsapp.net")
    return Message(
        Info=MessageInfo(
            MessageSource=MessageSource(Chat=person, Sender=person),
            ID="3EB0IN",
            Timestamp=timestamp_ms,
        ),
        Message=e2e.Message(conversation=text),
    )


async def _running(
    settings: Settings, run: Callable[[NeonizeTransport, FakeClient, list[str]], Any]
) -> None:
    clients: list[FakeClient] = []
    transport, failures = _transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await wait_for(lambda: bool(clients) and clients[0].connects == 1, what="connect")
        await run(transport, clients[0], failures)
        nursery.cancel_scope.cancel()


async def test_a_received_message_in_milliseconds_is_read_as_its_time(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    received: list[InboundMessage] = []

    async def scenario(
        transport: NeonizeTransport, client: FakeClient, failures: list[str]
    ) -> None:
        transport.on_inbound = received.append
        await trio.to_thread.run_sync(execute, client, message_event(1_764_111_111_250))
        await wait_for(lambda: bool(received), timeout=5, what="the message")
        assert received[0].timestamp == 1_764_111_111.25
        assert as_event(received[0])["timestamp"] == "2025-11-25T22:51:51.250+00:00"
        assert failures == []

    await _running(settings, scenario)


async def test_a_callback_that_raises_is_counted_and_the_run_goes_on(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    receipts: list[ReceiptInfo] = []

    def broken(_message: InboundMessage) -> None:
        raise ValueError("a consumer's bug")

    async def scenario(
        transport: NeonizeTransport, client: FakeClient, failures: list[str]
    ) -> None:
        transport.on_inbound = broken
        transport.on_receipt = receipts.append
        await trio.to_thread.run_sync(execute, client, message_event(1_764_111_111_000))
        await wait_for(lambda: failures == ["message"], timeout=5, what="the failure counted")
        receipt = Receipt(MessageIDs=["3EB0X"], Type=Receipt.ReceiptType.READ, Timestamp=5)
        await trio.to_thread.run_sync(execute, client, receipt)  # trio still runs callbacks
        await wait_for(lambda: bool(receipts), timeout=5, what="the next receipt")
        assert receipts[0] == ReceiptInfo(("3EB0X",), "read", 5.0)

    await _running(settings, scenario)


_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_events = st.one_of(
    st.builds(
        lambda ts, text, user, group: Message(
            Info=MessageInfo(
                MessageSource=MessageSource(
                    Chat=JID(User=user, Server="g.us" if group else "s.whatsapp.net"),
                    Sender=JID(User=user, Server="s.whatsapp.net"),
                    IsGroup=group,
                ),
                ID=user[:20] or "x",
                Timestamp=ts,
            ),
            Message=e2e.Message(conversation=text),
        ),
        _int64,
        st.text(max_size=50),
        st.text(max_size=30),
        st.booleans(),
    ),
    st.builds(
        lambda ts, ids, kind: Receipt(MessageIDs=ids, Type=kind, Timestamp=ts),
        _int64,
        st.lists(st.text(max_size=20), max_size=3),
        st.sampled_from(list(Receipt.ReceiptType.values())),
    ),
)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_events, min_size=1, max_size=8))
def test_any_event_through_neonize_dispatch_leaves_trio_running(
    make_env: Callable[..., dict[str, str]], events: list[Any]
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    seen: list[object] = []

    def consume(item: object) -> None:
        if isinstance(item, InboundMessage):
            as_event(item)  # what the bus publishes: a date from the timestamp
        seen.append(item)

    async def scenario(
        transport: NeonizeTransport, client: FakeClient, failures: list[str]
    ) -> None:
        transport.on_inbound = consume
        transport.on_receipt = consume
        for event in events:
            await trio.to_thread.run_sync(execute, client, event)
        await trio.sleep(0.05)
        assert failures == []
        # trio still runs: a last receipt comes through after all of them
        await trio.to_thread.run_sync(
            execute, client, Receipt(MessageIDs=["last"], Type=Receipt.ReceiptType.READ)
        )
        await wait_for(lambda: any(getattr(s, "message_ids", ()) == ("last",) for s in seen))

    trio.run(_running, settings, scenario)


async def test_connected_sessions_hold_no_token_of_trios_default_limiter() -> None:
    """45 sessions (more than trio's 40 default tokens) connected at once: a short blocking
    call of the process still runs at once (before: it waited behind every connect())."""
    from wa_trio.transport.neonize.go_maps import LoginReads, connect_registered

    release = threading.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(45):
            registered = trio.Event()
            registered.set()  # each client said something at once: the maps hold ends
            reads = LoginReads(trio.lowlevel.current_trio_token())
            connect = partial(release.wait, 30)
            nursery.start_soon(connect_registered, nursery, connect, registered, reads)
        await wait_for(lambda: threading.active_count() >= 45, what="45 connect threads")
        assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(lambda: 42) == 42
        release.set()


async def test_a_lid_only_sender_is_resolved_and_broadcasts_are_not_messages(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    received: list[InboundMessage] = []

    def sent_by(chat: JID, sender: JID, message_id: str, group: bool = False) -> Message:
        return Message(
            Info=MessageInfo(
                MessageSource=MessageSource(Chat=chat, Sender=sender, IsGroup=group),
                ID=message_id,
                Timestamp=1_764_111_111_000,
            ),
            Message=e2e.Message(conversation="STOP"),
        )

    async def scenario(
        transport: NeonizeTransport, client: FakeClient, failures: list[str]
    ) -> None:
        transport.on_inbound = received.append
        client.lid_to_pn["98765432101234"] = "5511977776666"
        lid = JID(User="98765432101234", Server="lid")
        unknown = JID(User="11111111111111", Server="lid")
        person = JID(User="5511988887777", Server="s.whatsapp.net")
        for event in (
            sent_by(JID(User="status", Server="broadcast"), person, "status", group=True),
            sent_by(JID(User="1203630@newsletter", Server="newsletter"), person, "news"),
            sent_by(JID(User="1234", Server="broadcast"), person, "list"),
            sent_by(lid, lid, "by-lid"),
            sent_by(unknown, unknown, "by-unknown-lid"),
        ):
            await trio.to_thread.run_sync(execute, client, event)
        await wait_for(lambda: len(received) == 2, timeout=5, what="the two direct messages")
        by_id = {m.message_id: m for m in received}
        assert set(by_id) == {"by-lid", "by-unknown-lid"}
        assert by_id["by-lid"].sender == "+5511977776666" and by_id["by-lid"].direct
        assert by_id["by-unknown-lid"].sender is None  # still unknown: never an opt-out
        assert failures == []

    await _running(settings, scenario)
