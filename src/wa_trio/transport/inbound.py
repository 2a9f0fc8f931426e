"""Messages the account receives, as the rest of wa-trio sees them (pure: no neonize, no trio).

The neonize adapter (``neonize/events.py``) and the Cloud API webhook (``meta_webhook.py``) both
produce an ``InboundMessage``; ``as_event`` is the JSON published for consumers
(docs/inbound-message.schema.json). No media bytes ever: kind, mime type, size and caption.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from wa_trio.core.instants import epoch_seconds

SCHEMA_VERSION = 1
KINDS = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "voice",
        "document",
        "sticker",
        "location",
        "contact",
        "reaction",
        "other",
    }
)
MAX_TEXT = 65_536


@attrs.frozen
class InboundMessage:
    """One received message. ``sender`` is E.164 for a person (None when WhatsApp gave only a
    hidden id); in a group, ``group`` is the group JID and ``sender`` the participant."""

    account: str
    message_id: str
    sender: str | None
    timestamp: float
    kind: str
    text: str | None = None  # the text, or a media caption
    group: str | None = None
    reply_to: str | None = None  # the WhatsApp message id this one answers
    mime_type: str | None = None
    size: int | None = None
    transport: str = "neonize"
    #: the sender's hidden id (``<id>@lid`` user part) when WhatsApp gave no number: the
    #: transport resolves it through whatsmeow's LID store before the message goes on
    lid: str | None = None
    #: Cloud API: Meta's business-scoped user id of the sender (core/identity.py), with or
    #: without a number
    user_id: str | None = None

    @property
    def direct(self) -> bool:
        """A one-to-one message from a person we can name: their number, or (Cloud API) their
        BSUID (opt-outs and replies count only these)."""
        return self.group is None and (self.sender is not None or self.user_id is not None)


def as_event(message: InboundMessage) -> dict[str, Any]:
    """The published JSON (pure)."""
    event: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "account": message.account,
        "transport": message.transport,
        "whatsapp_message_id": message.message_id,
        "sender": message.sender,
        "group": message.group,
        "timestamp": datetime.fromtimestamp(epoch_seconds(message.timestamp), UTC).isoformat(
            timespec="milliseconds"
        ),
        "kind": message.kind,
        "text": message.text,
        "reply_to": message.reply_to,
    }
    if message.user_id is not None:  # Cloud API: Meta's BSUID (docs/inbound.md)
        event["sender_user_id"] = message.user_id
    if message.mime_type is not None or message.size is not None:
        event["media"] = {"mime_type": message.mime_type, "size": message.size}
    return event


def e164(user: str) -> str | None:
    """``+digits`` from a JID user part that is a phone number; None otherwise."""
    digits = user.split(":", 1)[0]
    return f"+{digits}" if digits.isdigit() and 8 <= len(digits) <= 15 else None


__all__ = ["KINDS", "SCHEMA_VERSION", "InboundMessage", "as_event", "e164"]
