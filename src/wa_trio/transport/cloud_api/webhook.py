"""Meta's webhooks in (Cloud API): the subscription handshake, signatures, status updates.

``web.py`` serves ``GET/POST /webhooks/whatsapp`` and hands the raw request here:

- the handshake answers ``hub.challenge`` only for ``hub.mode=subscribe`` with the verify token
  (compared in constant time); anything else is 403;
- a POST is checked before anything is parsed: its ``X-Hub-Signature-256`` must be the
  HMAC-SHA256 of the raw body with the app secret (constant-time compare); unsigned or badly
  signed -> 403, larger than ``MAX_BODY`` -> 413; all counted, nothing parsed;
- a signed body's ``statuses`` become ``ReceiptInfo`` (delivered, read, failed with our code for
  Meta's error) handed to the status publisher, which maps them to jobs through the ledger by
  WhatsApp message id (unknown ids are counted there); inbound ``messages`` become
  ``InboundMessage`` for ``InboundPublisher`` (the bus, opt-outs, the unanswered budget). The
  answer is 200 as soon as the body is
  queued: the ledger look-ups happen after, in the status task.

These routes are authenticated by Meta's signature, not by the operator token: they are the
only routes meant to face the internet (docs/cloud-api.md shows the proxy rule).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import attrs
import trio

from wa_trio.core.identity import bsuid
from wa_trio.core.instants import epoch_seconds
from wa_trio.log import log_contained
from wa_trio.metrics import Metrics
from wa_trio.transport.cloud_api.dedup import WebhookSeen
from wa_trio.transport.cloud_api.meta_errors import classify
from wa_trio.transport.inbound import KINDS, MAX_TEXT, InboundMessage, e164
from wa_trio.transport.receipts import ReceiptInfo

MAX_BODY = 1 << 20  # bytes; Meta's notifications are a few KB
SIGNATURE_HEADER = "X-Hub-Signature-256"
STATUS_KINDS = {"delivered": "delivered", "read": "read", "failed": "failed"}


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signed(app_secret: str, body: bytes, header: str | None) -> bool:
    if not header or len(header) > 200:
        return False
    return hmac.compare_digest(signature(app_secret, body).encode(), header.strip().encode())


@attrs.frozen
class Parsed:
    receipts: list[ReceiptInfo]
    sent: int  # "sent" statuses: we emitted ours when Meta accepted the request
    inbound: list[InboundMessage]
    skipped: int = 0  # items that could not be read (counted, the rest went on)


def parse(payload: Any) -> Parsed:
    """The status updates and inbound messages of one notification (anything else ignored)."""
    receipts: list[ReceiptInfo] = []
    inbound: list[InboundMessage] = []
    sent = skipped = 0
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            messages = value.get("messages")
            for message in messages if isinstance(messages, list) else []:
                received = _each(_inbound, message)
                if isinstance(received, InboundMessage):
                    inbound.append(received)
                skipped += received is _SKIPPED
            statuses = value.get("statuses")
            for status in statuses if isinstance(statuses, list) else []:
                receipt = _each(_receipt, status)
                if isinstance(receipt, ReceiptInfo):
                    receipts.append(receipt)
                elif isinstance(status, dict) and status.get("status") == "sent":
                    sent += 1
                skipped += receipt is _SKIPPED
    return Parsed(receipts, sent, inbound, skipped)


_SKIPPED = object()


def _each(read: Callable[[Any], Any], item: Any) -> Any:
    """One item of a notification read on its own: one that cannot be read is skipped
    (``_SKIPPED``), the others go on (issue 26)."""
    try:
        return read(item)
    except Exception:  # noqa: BLE001 - one item's bulkhead
        return _SKIPPED


_MEDIA_KINDS = {"image", "video", "audio", "document", "sticker"}


def _inbound(message: Any) -> InboundMessage | None:
    """One Cloud API ``messages[]`` entry (ids bounded, text capped, no media bytes)."""
    if not isinstance(message, dict):
        return None
    message_id, sender = message.get("id"), message.get("from")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 256:
        return None
    kind = message.get("type") if isinstance(message.get("type"), str) else "other"
    text, mime, size = None, None, None
    if kind == "text":
        body = message.get("text")
        text = body.get("body") if isinstance(body, dict) else None
    elif kind == "button":
        body = message.get("button")
        kind, text = "text", body.get("text") if isinstance(body, dict) else None
    elif kind in _MEDIA_KINDS:
        found = message.get(kind)
        media: dict[str, Any] = found if isinstance(found, dict) else {}
        text = media.get("caption")
        mime = media.get("mime_type") if isinstance(media.get("mime_type"), str) else None
        if kind == "audio" and media.get("voice") is True:
            kind = "voice"
    elif kind == "contacts":
        kind = "contact"
    elif kind not in KINDS:
        kind = "other"
    context = message.get("context")
    reply_to = context.get("id") if isinstance(context, dict) else None
    timestamp = epoch_seconds(message.get("timestamp"))
    return InboundMessage(
        account="default",
        message_id=message_id,
        sender=e164(sender) if isinstance(sender, str) else None,
        timestamp=timestamp,
        kind=kind,
        text=text[:MAX_TEXT] if isinstance(text, str) and text else None,
        reply_to=reply_to if isinstance(reply_to, str) and len(reply_to) <= 256 else None,
        mime_type=mime,
        size=size,
        transport="cloud-api",
        user_id=bsuid(message.get("from_user_id")),
    )


def _receipt(status: Any) -> ReceiptInfo | None:
    if not isinstance(status, dict):
        return None
    kind = STATUS_KINDS.get(str(status.get("status")))
    message_id = status.get("id")
    if kind is None or not isinstance(message_id, str) or not 0 < len(message_id) <= 256:
        return None
    timestamp = epoch_seconds(status.get("timestamp"))
    code = None
    if kind == "failed":
        errors = status.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else {}
        code = classify(400, {"error": first}).rule.code if isinstance(first, dict) else None
        code = code or "cloud_api_rejected"
    return ReceiptInfo((message_id,), kind, timestamp, code=code)


class MetaWebhook:
    """What the routes call: ``handshake`` and ``receive`` give an HTTP status (and body)."""

    def __init__(
        self,
        app_secret: str,
        verify_token: str,
        metrics: Metrics,
        on_receipt: Callable[[ReceiptInfo], None],
        on_inbound: Callable[[InboundMessage], None] | None = None,
        seen: WebhookSeen | None = None,
    ) -> None:
        self.seen = seen  # redeliveries dropped (dedup.py); None: every item is handled
        self._on_inbound = on_inbound
        self._secret = app_secret
        self._verify_token = verify_token
        self._metrics = metrics
        self._on_receipt = on_receipt

    def handshake(
        self, mode: str | None, token: str | None, challenge: str | None
    ) -> tuple[int, str]:
        ok = (
            mode == "subscribe"
            and token is not None
            and challenge is not None
            and len(challenge) <= 256
            and hmac.compare_digest(token.encode(), self._verify_token.encode())
        )
        self._metrics.meta_webhook.labels("handshake" if ok else "handshake_refused").inc()
        return (200, challenge or "") if ok else (403, "")

    def refuse(self, result: str) -> int:
        """Count a request refused before its body was read (``too_large`` or ``unsigned``)."""
        self._metrics.meta_webhook.labels(result).inc()
        return 413 if result == "too_large" else 403

    def receive(self, body: bytes, header: str | None) -> int:
        if len(body) > MAX_BODY:
            return self.refuse("too_large")
        if not header:
            return self.refuse("unsigned")
        if not signed(self._secret, body, header):
            return self.refuse("bad_signature")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            self._metrics.meta_webhook.labels("bad_json").inc()
            return 400
        self._metrics.meta_webhook.labels("accepted").inc()
        parsed = parse(payload)
        if parsed.skipped:
            self._metrics.contained.labels("webhook_item").inc(parsed.skipped)
        for receipt in parsed.receipts:
            if not self._first(f"status:{receipt.message_ids[0]}:{receipt.kind}"):
                continue
            self._metrics.meta_webhook_items.labels(f"status_{receipt.kind}").inc()
            self._hand(self._on_receipt, receipt)
        if parsed.sent:
            self._metrics.meta_webhook_items.labels("status_sent").inc(parsed.sent)
        for message in parsed.inbound:
            if not self._first(f"message:{message.message_id}"):
                continue
            if self._on_inbound is None:
                self._metrics.meta_webhook_items.labels("inbound_dropped").inc()
                continue
            self._metrics.meta_webhook_items.labels("inbound").inc()
            self._hand(self._on_inbound, message)
        return 200

    def _first(self, key: str) -> bool:
        """Whether this item is new; a redelivered one is counted (``duplicate``) and dropped."""
        if self.seen is None or self.seen.first(key):
            return True
        self._metrics.meta_webhook_items.labels("duplicate").inc()
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The de-duplication's store (a task of the root nursery; nothing without one)."""
        if self.seen is None:
            task_status.started()
            return
        await self.seen.run(task_status=task_status)

    def _hand(self, to: Callable[[Any], None], item: Any) -> None:
        """Hand one item on; one that fails is counted and the others still go."""
        try:
            to(item)
        except Exception as error:  # noqa: BLE001 - one item's bulkhead
            self._metrics.contained.labels("webhook_item").inc()
            log_contained("wa_trio:meta_webhook:item_failed", error)


__all__ = ["MAX_BODY", "SIGNATURE_HEADER", "MetaWebhook", "Parsed", "parse", "signature", "signed"]
