"""Corrections to serena 0.9.1's AMQP field-table decoding (applied once, on import of amqp).

serena reads an array field (``A``) as "item count, then items", but AMQP 0-9-1 prefixes an
array with its length in *bytes*. Every message RabbitMQ dead-letters carries an ``x-death``
header, an array of tables, so serena mis-parses it, raises ``struct.error`` in the connection's
reader and closes the connection; the message is redelivered and the worker loops forever. Our
delayed retries go through dead-lettering, so this is not optional. serena also refuses decimal
fields (``D``). This module replaces ``DecodingBuffer.read_field_value`` with a complete
implementation of the spec's field types (RabbitMQ's errata names), nothing else; the encoder
is untouched (``headers.encodable`` keeps what we publish within what serena can encode).
Remove when serena fixes it upstream (docs/decisions.md).
"""

from __future__ import annotations

import decimal
from typing import Any

from serena.utils.buffer import DecodingBuffer


def _read_field_value(self: DecodingBuffer) -> Any:
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
        inner = DecodingBuffer(self.read_long_string())
        items = []
        while inner.has_data:
            items.append(_read_field_value(inner))
        return items
    if kind == "T":
        return self.read_longlong()
    if kind == "F":
        return self.read_table()
    if kind == "V":
        return None
    raise ValueError(f"unknown AMQP field type {kind!r}")


def apply() -> None:
    DecodingBuffer.read_field_value = _read_field_value  # type: ignore[method-assign]
