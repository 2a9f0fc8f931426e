"""The send in flight (sender.py): a transport that says it is connected but refuses (as one
that just stopped: a fenced worker's) must not keep the sender in a loop a cancel cannot end."""

from __future__ import annotations

import trio

from wa_trio.core.errors import NotConnectedError
from wa_trio.core.pacing import Pacer
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.pipeline.sender import Sender
from wa_trio.transport import ConnectionState, OutgoingMessage, SendResult
from wa_trio.transport.dry_run import DryRunTransport


class Refusing:
    """Says "connected", refuses every send, inside the sender's shield (a checkpoint there
    cannot deliver a cancel); gives up after ``LIMIT`` tries so a regression fails, not hangs."""

    name = "refusing"
    state = ConnectionState.CONNECTED
    LIMIT = 10_000

    def __init__(self) -> None:
        self.tries = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.tries += 1
        await trio.lowlevel.checkpoint()
        if self.tries >= self.LIMIT:
            raise RuntimeError("the sender spun")
        raise NotConnectedError("stopped")


async def test_a_cancel_ends_a_sender_held_by_a_transport_that_refuses() -> None:
    transport = Refusing()
    sender = Sender(
        transport,  # type: ignore[arg-type]  # only what Sender uses
        Pacer(rate=None),
        Metrics("q", "q.dlq"),
        Redactor(True),
        trio.Event(),
    )
    message = OutgoingMessage("+5511999999999", "hi", "user", "job-1")
    with trio.move_on_after(0.2) as scope:
        await sender.send(message)
    assert scope.cancelled_caught
    assert transport.tries < Refusing.LIMIT


def _state(transport: DryRunTransport) -> ConnectionState:
    return transport.state  # read anew (mypy would keep the first reading)


async def test_a_stopped_dry_run_transport_is_not_connected_until_it_runs_again() -> None:
    transport = DryRunTransport(None, Redactor(True))
    assert transport.state is ConnectionState.CONNECTED  # usable before it runs (tests do)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        nursery.cancel_scope.cancel()
    assert _state(transport) is ConnectionState.DISCONNECTED
    with trio.move_on_after(0.1) as waited:
        await transport.wait_connected()
    assert waited.cancelled_caught  # it waits: a stopped transport sends nothing
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        assert _state(transport) is ConnectionState.CONNECTED
        await transport.send(OutgoingMessage("+5511999999999", "hi", "user", "job-2"))
        nursery.cancel_scope.cancel()
