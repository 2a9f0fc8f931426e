"""Cloud API request bodies and answers (pure): what we POST to ``/<phone-number-id>/messages``
and the WhatsApp message id we read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wa_trio.transport import OutgoingMessage

#: our media kinds -> the Cloud API's message types (a voice note is audio in OGG/Opus)
CLOUD_KINDS = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "voice": "audio",
    "document": "document",
    "sticker": "sticker",
}


def message_body(message: OutgoingMessage, media_id: str | None = None) -> dict[str, Any]:
    """The JSON of one send: media by its uploaded id, an approved template when the job
    carries ``cloud_template``, otherwise text (link previews off, as with neonize)."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.destination.lstrip("+"),
    }
    template = message.cloud_template
    if media_id is not None and message.media is not None:
        kind = CLOUD_KINDS[message.media.kind]
        media: dict[str, Any] = {"id": media_id}
        if message.text and kind in {"image", "video", "document"}:
            media["caption"] = message.text
        if kind == "document" and message.media.filename:
            media["filename"] = message.media.filename
        body["type"] = kind
        body[kind] = media
    elif template is not None:
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


def uploaded_id(payload: Any) -> str | None:
    """``id`` of a media upload's answer."""
    found = payload.get("id") if isinstance(payload, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= 256 else None


def message_id(payload: Any) -> str | None:
    """``messages[0].id`` of a success answer (``wamid.…``), None when it has none."""
    if not isinstance(payload, dict):
        return None
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    found = messages[0].get("id")
    return found if isinstance(found, str) and 0 < len(found) <= 256 else None


__all__ = ["CLOUD_KINDS", "message_body", "message_id", "template_object", "uploaded_id"]
