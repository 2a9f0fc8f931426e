"""The WhatsApp boundary: one small Protocol, two implementations.

- ``dry_run.DryRunTransport``: never touches WhatsApp; records would-be sends.
- ``neonize.NeonizeTransport``: the real account, through neonize/whatsmeow in worker threads.

The pipeline only sees ``Transport``; tests swap implementations freely.
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs
import trio


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    WAITING_FOR_LOGIN = "waiting_for_login"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    BANNED = "banned"


@attrs.frozen
class OutgoingMessage:
    """One message to send. ``user_id`` and ``job_key`` are for records and logs only."""

    destination: str  # E.164
    text: str
    user_id: str
    job_key: str


@attrs.frozen
class SendResult:
    """What WhatsApp gave back for an accepted message."""

    message_id: str
    timestamp: float


class Transport(Protocol):
    """Send text to E.164 numbers from one WhatsApp account."""

    name: str

    @property
    def state(self) -> ConnectionState:
        """The current connection state (never blocks)."""
        ...

    async def wait_connected(self) -> None:
        """Return once the transport can send (at once when it already can)."""
        ...

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send ``message.text`` to ``message.destination`` (E.164).

        Raises:
            SendError: ``transient`` tells whether a retry can help.
        """
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection for the worker's lifetime (connect, watch, reconnect)."""
        ...


__all__ = ["ConnectionState", "OutgoingMessage", "SendResult", "Transport"]
