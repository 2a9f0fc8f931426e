"""neonize events -> what the rest of wa-trio needs (pure: no threads, no trio, no I/O).

``signal_of`` turns a neonize event object (a protobuf message: ``Connected``, ``LoggedOut``,
...) into a state-machine ``Signal``; ``receipt_of`` turns a ``Receipt`` into ``ReceiptInfo``;
``inbound_of`` turns a ``Message`` into an ``InboundMessage``.
They run on Go-owned threads (the handlers call them there), so they touch nothing shared.
Unit-tested with real neonize protobuf events (tests/unit/transport/test_neonize_events.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wa_trio.core.instants import MILLISECONDS, epoch_seconds
from wa_trio.transport.inbound import MAX_TEXT, InboundMessage, e164
from wa_trio.transport.receipts import RECEIPT_KINDS, ReceiptInfo
from wa_trio.transport.states import Signal

#: ConnectFailure and the other events after which whatsmeow stops reconnecting while its
#: ``connect()`` keeps blocking: the transport stops the client so its watchdog can go on.
TERMINAL = frozenset(
    {"logged_out", "stream_replaced", "temporary_ban", "client_outdated", "connect_failure"}
)


def event_not_encodable(message: str) -> bool:
    """connect() raised because goneonize could not encode an event, not because the dial
    failed: ``EncodeReceipts`` (utils/encoder.go) leaves the required ``Type`` of a
    ``server-error`` receipt unset and ``CallbackFunction``'s ``proto.Marshal`` answers Go's
    ``RequiredNotSet`` error ("proto: required field neonize.Receipt.Type not set"), which
    ``Neonize`` returns. The session itself is fine: reconnect at once, count nothing."""
    return "required field" in message and "not set" in message


#: chats that are not a conversation with the account: contacts' Status posts
#: (``status@broadcast``, which whatsmeow marks IsGroup), broadcast lists and channels
#: (whatsmeow's types.BroadcastServer and NewsletterServer); never published, never an opt-out
NOT_CHATS = frozenset({"broadcast", "newsletter"})


def _temporary_ban(event: Any) -> Signal:
    try:
        reason = type(event).TempBanReason.Name(event.Code)
    except ValueError:
        reason = "unknown reason"
    expire = max(0.0, float(event.Expire))
    return Signal("temporary_ban", int(event.Code), f"{reason}; expires in {expire:g}s", expire)


def _pair_status(event: Any) -> Signal:
    if event.Error:
        return Signal("pair_error", detail=str(event.Error)[:200])
    return Signal("pair_success", detail=str(event.ID.User))


#: each connection event (by its class name) and the Signal it is (a flat table)
_SIGNALS: dict[str, Callable[[Any], Signal]] = {
    "Connected": lambda _event: Signal("connected"),
    "Disconnected": lambda _event: Signal("disconnected"),
    "KeepAliveTimeout": lambda event: Signal(
        "keepalive_timeout", detail=f"errors={event.ErrorCount}"
    ),
    "KeepAliveRestored": lambda _event: Signal("keepalive_restored"),
    "LoggedOut": lambda event: Signal(
        "logged_out", int(event.Reason), "on_connect" if event.OnConnect else ""
    ),
    "StreamReplaced": lambda _event: Signal("stream_replaced"),
    "TemporaryBan": _temporary_ban,
    "ConnectFailure": lambda event: Signal(
        "connect_failure", int(event.Reason), str(event.Message)[:200]
    ),
    "ClientOutdated": lambda _event: Signal("client_outdated"),
    "PairStatus": _pair_status,
}


def signal_of(event: Any) -> Signal:
    """Turn a neonize event object into a state-machine Signal (runs on a Go thread)."""
    kind = type(event).__name__
    make = _SIGNALS.get(kind)
    return Signal(kind.lower()) if make is None else make(event)


EVENT_NAMES = (
    "ConnectedEv",
    "DisconnectedEv",
    "KeepAliveTimeoutEv",
    "KeepAliveRestoredEv",
    "LoggedOutEv",
    "StreamReplacedEv",
    "TemporaryBanEv",
    "ConnectFailureEv",
    "ClientOutdatedEv",
    "PairStatusEv",
)


def receipt_of(event: Any) -> ReceiptInfo:
    return ReceiptInfo(
        message_ids=tuple(str(i) for i in event.MessageIDs),
        kind=RECEIPT_KINDS.get(int(event.Type), "other"),
        # neonize 0.5.2 encodes receipts in seconds (goneonize/utils/encoder.go EncodeReceipt:
        # ``receipt.Timestamp.Unix()``)
        timestamp=epoch_seconds(event.Timestamp),
    )


#: waE2E.Message fields -> our kinds (the first present wins)
_MEDIA = (
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
)


def inbound_of(event: Any, account: str = "default") -> InboundMessage | None:
    """A neonize ``Message`` event -> ``InboundMessage``; None for our own messages (sent from
    the phone or by us) and for protocol messages that carry nothing to read."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe or source.Chat.Server in NOT_CHATS:
        return None
    body = event.Message
    kind, text, mime, size, context = "other", None, None, None, None
    if body.HasField("extendedTextMessage"):
        kind, text = "text", body.extendedTextMessage.text
        context = body.extendedTextMessage.contextInfo
    elif body.conversation:
        kind, text = "text", body.conversation
    else:
        for field, name in _MEDIA:
            if body.HasField(field):
                media = getattr(body, field)
                kind = name
                if field == "audioMessage" and media.PTT:
                    kind = "voice"
                text = getattr(media, "caption", None) or None
                mime = media.mimetype or None
                size = int(media.fileLength) if media.fileLength else None
                context = media.contextInfo
                break
        else:
            if body.HasField("locationMessage"):
                kind = "location"
            elif body.HasField("contactMessage"):
                kind = "contact"
            elif body.HasField("reactionMessage"):
                kind = "reaction"
            elif body.HasField("protocolMessage") or body.HasField("senderKeyDistributionMessage"):
                return None
    sender = _person(source.Sender, source.SenderAlt)
    lid = _hidden(source.Sender, source.SenderAlt) if sender is None else None
    group = _jid(source.Chat) if source.IsGroup else None
    reply_to = context.stanzaID if context is not None and context.stanzaID else None
    return InboundMessage(
        account=account,
        message_id=str(info.ID),
        sender=sender,
        # milliseconds: goneonize/utils/encoder.go EncodeMessageInfo encodes
        # ``messageInfo.Timestamp.UnixMilli()`` (issue 27; docs/decisions.md)
        timestamp=epoch_seconds(info.Timestamp, unit=MILLISECONDS),
        kind=kind,
        text=text[:MAX_TEXT] if text else None,
        group=group,
        reply_to=reply_to,
        mime_type=mime,
        size=size,
        lid=lid,
    )


def _hidden(sender: Any, alternative: Any) -> str | None:
    """The sender's ``@lid`` id when that is all WhatsApp gave."""
    for jid in (sender, alternative):
        if jid.Server == "lid" and jid.User:
            return str(jid.User)
    return None


def _jid(jid: Any) -> str:
    return f"{jid.User}@{jid.Server}"


def _person(sender: Any, alternative: Any) -> str | None:
    """The sender's number: the JID on the phone-number server (whatsmeow puts the other one,
    a hidden ``@lid`` id, in ``SenderAlt`` or ``Sender`` depending on the addressing mode)."""
    for jid in (sender, alternative):
        if jid.Server == "s.whatsapp.net":
            return e164(jid.User)
    return None
