"""Corrections to serena 0.9.1's AMQP field-table decoding (applied once, on import of amqp).

serena reads an array field (``A``) as "item count, then items", but AMQP 0-9-1 prefixes an
array with its length in *bytes*. Every message RabbitMQ dead-letters carries an ``x-death``
header, an array of tables, so serena mis-parses it, raises ``struct.error`` in the connection's
reader and closes the connection; the message is redelivered and the worker loops forever. Our
delayed retries go through dead-lettering, so this is not optional. serena also refuses decimal
fields (``D``). This module replaces ``DecodingBuffer.read_field_value`` with a complete
implementation of the spec's field types (RabbitMQ's errata names), nothing else; the encoder
is untouched (``headers.encodable`` keeps what we publish within what serena can encode).

Two more, because a publisher controls these bytes and serena decodes them in the connection's
reader (an exception there ended the process, issue 26): short strings (``message_id``,
``correlation_id``, ``type``, ``content_type``, ``app_id``, every header key) that are not UTF-8
decode with U+FFFD in place of the bad bytes instead of raising; tables and arrays nested deeper
than ``MAX_DEPTH`` are skipped by their length prefix and replaced by ``TOO_DEEP`` instead of
recursing until ``RecursionError``. Remove when serena fixes it upstream (docs/decisions.md).

And one in the connection: ``AMQPConnection._open_channel`` cancelled after its ``channel.open``
went out (an account stopped while opening its channel: a lease lost, a move) forgot the
channel while the broker opened it; the broker's ``open-ok`` then raised ``KeyError`` in the
reader (ending the shared connection and, escaping it, the process of 200 accounts that shared
it), or the next open of that id was refused (``second 'channel.open' seen``, the connection
closed). ``_open_channel`` here finishes what it started: an abandoned channel is closed
properly (``channel.close``, its id freed at ``close-ok``, as serena frees a closed one).
"""

from __future__ import annotations

import contextlib
import decimal
from typing import Any

import anyio
from serena.channel import Channel
from serena.connection import AMQPConnection
from serena.payloads.method import (
    BasicQOSOkPayload,
    BasicQOSPayload,
    ChannelOpenPayload,
    ConfirmSelectOkPayload,
    ConfirmSelectPayload,
)
from serena.utils.buffer import DecodingBuffer

#: nesting a header value may have (RabbitMQ's own x-death is 2 deep)
MAX_DEPTH = 32
#: seconds the close of an abandoned channel may take to go out
ABANDON_WAIT = 5.0
TOO_DEEP = "(nested deeper than 32 levels: not decoded)"


def _read_short_string(self: DecodingBuffer) -> str:
    size = self.read_octet()
    return self._read_size(size).decode("utf-8", "replace")


def _read_table(self: DecodingBuffer, depth: int = 0) -> dict[str, Any]:
    inner = DecodingBuffer(self.read_long_string())
    result: dict[str, Any] = {}
    while inner.has_data:
        key = _read_short_string(inner)
        result[key] = _read_field_value(inner, depth)
    return result


def _read_field_value(self: DecodingBuffer, depth: int = 0) -> Any:  # noqa: C901 - flat table of AMQP field types, as serena reads them
    kind = chr(self.read_octet())
    if kind == "t":
        return self.read_octet() != 0
    if kind == "b":
        return self.read_octet_signed()
    if kind == "B":
        return self.read_octet()
    if kind == "s":
        return self.read_short_signed()
    if kind == "u":
        return self.read_short()
    if kind == "I":
        return self.read_long_signed()
    if kind == "i":
        return self.read_long()
    if kind == "l":
        return self.read_longlong_signed()
    if kind == "L":
        return self.read_longlong()
    if kind == "f":
        return self._unpack("f")[0]
    if kind == "d":
        return self._unpack("d")[0]
    if kind == "D":
        scale = self.read_octet()
        value = self.read_long_signed()
        return decimal.Decimal(value).scaleb(-scale)
    if kind in {"S", "x"}:
        return self.read_long_string()
    if kind == "A":
        raw = self.read_long_string()
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        inner = DecodingBuffer(raw)
        items = []
        while inner.has_data:
            items.append(_read_field_value(inner, depth + 1))
        return items
    if kind == "T":
        return self.read_longlong()
    if kind == "F":
        if depth >= MAX_DEPTH:
            self.read_long_string()
            return TOO_DEEP
        return _read_table(self, depth + 1)
    if kind == "V":
        return None
    raise ValueError(f"unknown AMQP field type {kind!r}")


async def _open_channel(self: AMQPConnection) -> Channel:
    """serena 0.9.1's ``_open_channel`` (channel.open, then qos and confirm.select), with the
    channel closed rather than forgotten when it is given up after ``channel.open`` went out."""
    for idx, used in enumerate(self._channels):
        if not used:
            self._channels[idx] = True
            break
    else:
        raise RuntimeError("All channel IDs have been used")
    channel = Channel(idx, self, self._channel_buffer_size)
    self._channel_channels[idx] = channel
    sent = [False]

    async def send_open() -> None:
        with anyio.CancelScope(shield=True):  # the frame goes out whole, or not at all
            await self._send_method_frame(idx, ChannelOpenPayload())
            sent[0] = True

    try:
        async with anyio.create_task_group() as tg:  # listening before open-ok can come
            tg.start_soon(send_open)
            await channel._wait_until_open()
        qos = BasicQOSPayload(
            prefetch_size=0, prefetch_count=self._channel_buffer_size // 3, global_=False
        )
        await channel._send_and_receive_frame(qos, BasicQOSOkPayload)
        select = ConfirmSelectPayload(no_wait=False)
        await channel._send_and_receive_frame(select, ConfirmSelectOkPayload)
    except BaseException:
        await _abandon(self, channel, sent=sent[0])
        raise
    return channel


async def _abandon(self: AMQPConnection, channel: Channel, *, sent: bool) -> None:
    """A channel given up while opening: freed at once when the broker never heard of it,
    else closed (the broker answers open-ok, dropped, then close-ok, at which the reader
    frees the id as for any closed channel). When the close cannot be sent, the id stays
    taken (frames still find their channel): the connection is failing anyway."""
    if not sent:
        self._channels[channel.id] = False
        self._channel_channels.pop(channel.id, None)
        return
    if channel._closed:  # the broker closed it (the reader freed it) or the connection ended
        return
    channel._closed = True
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(ABANDON_WAIT),
        contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError),
    ):
        await self._close_channel(channel.id)


def apply() -> None:
    DecodingBuffer.read_field_value = _read_field_value  # type: ignore[method-assign]
    DecodingBuffer.read_table = _read_table  # type: ignore[method-assign]
    DecodingBuffer.read_short_string = _read_short_string  # type: ignore[method-assign]
    AMQPConnection._open_channel = _open_channel  # type: ignore[method-assign]
