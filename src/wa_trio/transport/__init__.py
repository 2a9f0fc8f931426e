"""The WhatsApp boundary: one small Protocol, two implementations.

- ``dry_run.DryRunTransport``: never touches WhatsApp; records would-be sends.
- ``neonize.NeonizeTransport``: the real account, through neonize/whatsmeow in worker threads.
- ``cloud_api.CloudApiTransport``: Meta's official WhatsApp Business Cloud API over HTTPS.

The pipeline only sees ``Transport``; tests swap implementations freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from wa_trio.core.media_rules import MediaPayload
from wa_trio.transport.inbound import InboundMessage
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.states import ConnectionState

if TYPE_CHECKING:  # the pure parts (states, receipts) must import without trio
    import trio


@attrs.frozen
class OutgoingMessage:
    """One message to send. ``user_id`` and ``job_key`` are for records and logs only."""

    destination: str  # E.164, or a group JID (<digits>@g.us)
    text: str  # empty for a Cloud API template; a media's caption (may be empty)
    user_id: str
    job_key: str
    #: a Cloud API approved template (``name``, ``language``, ``components``), validated by
    #: the envelope; only transports with ``cloud_templates`` accept it
    cloud_template: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    #: fetched and checked media bytes (``media_fetch``); None for text
    media: MediaPayload | None = None

    @property
    def group(self) -> bool:
        return self.destination.endswith("@g.us")


@attrs.frozen
class LoginStatus:
    """What the /login page shows (the web side renders it; transports import no web code)."""

    state: ConnectionState
    linkable: bool  # False: nothing to link (dry-run)
    qr: str | None = None
    qr_count: int = 0
    pair_code: str | None = None
    linked_as: str | None = None  # E.164, shown masked in production


@attrs.frozen
class SendResult:
    """What WhatsApp gave back for an accepted message."""

    message_id: str
    timestamp: float


class Transport(Protocol):
    """Send text to E.164 numbers from one WhatsApp account."""

    name: str
    #: whether jobs may carry a Cloud API ``cloud_template`` (else dead-lettered at validation)
    cloud_templates: bool
    #: called (trio thread) for each delivery/read receipt; set by the app before ``run``
    on_receipt: Callable[[ReceiptInfo], None] | None
    #: called (trio thread) for each message the account receives; set by the app
    on_inbound: Callable[[InboundMessage], None] | None
    #: Unix time a temporary ban ends (0.0: not banned)
    banned_until: float

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

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Own the connection for the worker's lifetime (connect, watch, reconnect)."""
        ...

    def health_problem(self) -> str | None:
        """Why the account cannot send until an operator acts (an expired Cloud API token),
        or None; /healthz reports it as failing."""
        ...

    def login_status(self) -> LoginStatus:
        """What a person linking the account needs to see (never blocks)."""
        ...

    def request_relogin(self) -> None:
        """After a logout: start a fresh login (an operator's POST /login/relogin)."""
        ...


__all__ = ["ConnectionState", "LoginStatus", "OutgoingMessage", "SendResult", "Transport"]
