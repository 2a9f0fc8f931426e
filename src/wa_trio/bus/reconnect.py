"""The one reconnect loop for every long-lived broker connection (pipeline, broker monitor,
status events): connect, serve, and on a broker failure log it, back off (capped, jittered) and
connect again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import eliot
import trio

from wa_trio.bus.amqp import BrokerAddress, BrokerError, Connection
from wa_trio.bus.shared import Role, connection_for
from wa_trio.core.retry import Backoff


async def keep_connected(
    address: BrokerAddress,
    serve: Callable[[Connection], Awaitable[None]],
    *,
    what: str,
    backoff: Backoff,
    stop: trio.Event | None = None,
    on_down: Callable[[], None] | None = None,
    role: Role = "jobs",
) -> None:
    """The one reconnect loop (pipeline, broker monitor, status events): connect, run
    ``serve(connection)``; on a broker failure call ``on_down``, log ``<what>:disconnected``
    (the redacted broker, the reason, the delay), wait a capped, jittered backoff (``serve``
    resets it once it is healthy) and connect again. Returns once ``stop`` is set. In a task
    that shares the process's connections (``bus.shared``), the connection is borrowed, for
    ``role``.

    Raises:
        TopologyError: the broker refused a declaration made by ``serve``.
    """
    while stop is None or not stop.is_set():
        try:
            async with connection_for(address, role) as connection:
                await serve(connection)
        except BrokerError as error:
            if on_down is not None:
                on_down()
            if stop is not None and stop.is_set():
                return
            delay = backoff.next_delay()
            eliot.log_message(
                message_type=f"{what}:disconnected",
                broker=address.redacted,
                reason=str(error)[:300],
                retry_in=round(delay, 3),
            )
            with trio.move_on_after(delay):
                if stop is not None:
                    await stop.wait()
                else:
                    await trio.sleep_forever()
