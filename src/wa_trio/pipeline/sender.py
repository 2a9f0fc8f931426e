"""The send in flight, as the pipeline sees it: waiting for WhatsApp, pacing, and the shield.

- ``wait_connected`` returns at once on the hot path; while WhatsApp is away it waits, but a
  stop ends the wait promptly (nothing is in flight then);
- ``pace`` waits as the pacing rules say (``pacing.Pacer``), interrupted by a stop;
- ``send`` runs the transport's send inside a cancel scope shielded from a broker loss (see
  ``protected``) but not from the shutdown deadline (``set_hard_deadline``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import eliot
import trio

from wa_trio.core.errors import NotConnectedError
from wa_trio.core.pacing import Pacer
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.pipeline.ledger_gate import Held
from wa_trio.transport import ConnectionState, OutgoingMessage, SendResult, Transport
from wa_trio.transport.states import STUCK


class SendAbandoned(Exception):
    """The shutdown deadline cut a send in flight: WhatsApp may have taken it. The job stays
    unacked with its ledger row ``sending`` (ambiguous on redelivery); not a job's failure."""


class Sender:
    def __init__(
        self,
        transport: Transport,
        pacer: Pacer,
        metrics: Metrics,
        redactor: Redactor,
        stopping: trio.Event,
    ) -> None:
        self.transport = transport
        self.pacer = pacer
        self.metrics = metrics
        self.redactor = redactor
        self._stopping = stopping
        self._hard_deadline = math.inf
        self.last_sent_at: float | None = None  # Unix time of the last send WhatsApp took
        self._protected_scopes: set[trio.CancelScope] = set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> bool:
        """A send is in flight now (WhatsApp may be taking it)."""
        return bool(self._protected_scopes)

    def set_hard_deadline(self, deadline: float) -> None:
        """The shutdown deadline (trio time): protected sends are cancelled at it, not before."""
        self._hard_deadline = deadline
        for scope in self._protected_scopes:
            scope.deadline = min(scope.deadline, deadline)

    @contextlib.contextmanager
    def _protected(self) -> Iterator[trio.CancelScope]:
        """A send in flight and its record, shielded from a broker loss.

        When the consuming connection dies mid-send, the connection's nursery cancels the sender.
        Cancelled there, WhatsApp may take the message while the ledger still says ``sending``:
        a resend after reconnecting (a duplicate). Shielded, the send finishes and is recorded
        ``sent``; only the ack is lost, and the redelivered copy is acked as a duplicate. The
        shutdown deadline (``set_hard_deadline``) still cancels it. Waiting for WhatsApp to
        connect is not shielded: nothing is in flight then.
        """
        with trio.CancelScope(shield=True, deadline=self._hard_deadline) as scope:
            self._protected_scopes.add(scope)
            try:
                yield scope
            finally:
                self._protected_scopes.discard(scope)

    async def wait_connected(self, *, or_stuck: bool = False) -> bool:
        """Wait until WhatsApp can send (``or_stuck``: or the account is banned, logged out or
        failed, for WHATSAPP_FALLBACK; the state tells which); False when a stop began first
        (a stop is prompt however long WhatsApp stays away)."""
        if self.stopping:
            return False
        state = self.transport.state
        if state is ConnectionState.CONNECTED or (or_stuck and state in STUCK):
            return True  # the hot path: no task, no checkpoint
        async with trio.open_nursery() as nursery:

            async def until_stop() -> None:
                await self._stopping.wait()
                nursery.cancel_scope.cancel()

            async def until_stuck() -> None:
                while self.transport.state not in STUCK:  # noqa: ASYNC110 - no event for it
                    await trio.sleep(1.0)  # a ban lasts hours: one look a second
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stop)
            if or_stuck:
                nursery.start_soon(until_stuck)
            await self.transport.wait_connected()
            nursery.cancel_scope.cancel()
        return not self.stopping

    async def pace(self, destination: str) -> bool:
        """Wait as the pacing rules say; False when a stop began meanwhile."""
        now = trio.current_time()
        wait = self.pacer.reserve(now, destination)
        self.metrics.pacing_tokens.set(max(0.0, self.pacer.tokens_at(now)))
        if wait <= 0:
            return True
        self.metrics.throttled.inc(wait)
        eliot.log_message(message_type="wa_trio:job:paced", wait=round(wait, 3))
        with trio.move_on_after(wait):
            await self._stopping.wait()
        return not self.stopping

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send, holding the job (no retry spent) while WhatsApp is not connected."""
        while True:
            if not await self.wait_connected():
                raise Held  # nothing in flight yet: leave it unacked
            try:
                with eliot.start_action(
                    action_type="wa_trio:job:send",
                    destination=self.redactor.phone(message.destination),
                    user_id=message.user_id,
                    transport=self.transport.name,
                ) as send_action:
                    started = time.perf_counter()
                    with self._protected() as protected:
                        result = await self.transport.send(message)
                    if protected.cancelled_caught:  # the shutdown deadline cut it in flight
                        await trio.lowlevel.checkpoint()  # the stop's own cancel, if pending
                        raise SendAbandoned("the shutdown deadline cut a send in flight")
                    self.metrics.send_duration.observe(time.perf_counter() - started)
                    send_action.addSuccessFields(whatsapp_message_id=result.message_id)
                    self.last_sent_at = time.time()
                    return result
            except NotConnectedError:
                eliot.log_message(message_type="wa_trio:job:held", reason="whatsapp offline")
                # an unshielded checkpoint: a transport that says "connected" but refuses
                # (it just stopped) must not turn this loop into a spin a cancel cannot end
                await trio.lowlevel.checkpoint()
