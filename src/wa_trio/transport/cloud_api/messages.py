"""Cloud API request bodies and answers (pure): what we POST to ``/<phone-number-id>/messages``
and the WhatsApp message id we read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wa_trio.transport import OutgoingMessage


def message_body(message: OutgoingMessage) -> dict[str, Any]:
    """The JSON of one send: an approved template when the job carries ``cloud_template``,
    otherwise text (link previews off, as with neonize)."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.destination.lstrip("+"),
    }
    template = message.cloud_template
    if template is not None:
        body["type"] = "template"
        body["template"] = template_object(template)
    else:
        body["type"] = "text"
        body["text"] = {"body": message.text, "preview_url": False}
    return body


def template_object(template: Mapping[str, Any]) -> dict[str, Any]:
    """A validated ``cloud_template`` (envelope) in the Cloud API's shape."""
    shaped: dict[str, Any] = {
        "name": template["name"],
        "language": {"code": template["language"]},
    }
    if template.get("components"):
        shaped["components"] = template["components"]
    return shaped


def message_id(payload: Any) -> str | None:
    """``messages[0].id`` of a success answer (``wamid.…``), None when it has none."""
    if not isinstance(payload, dict):
        return None
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    found = messages[0].get("id")
    return found if isinstance(found, str) and 0 < len(found) <= 256 else None


__all__ = ["message_body", "message_id", "template_object"]
