"""AMQP headers we write, and making a publisher's headers safe to write again (pure).

A dead-letter or retry copy carries the original headers. What a publisher put there went
through the broker, but not everything the wire can carry can be encoded again by our AMQP
client (serena 0.9.1 encodes integers only in 0 <= n < 2**32, no null, no array, keys up to 255
bytes). A header that cannot be written as it is must never crash the worker: ``encodable``
converts it (large or negative integers become text, arrays become JSON text) or drops it
(null values, over-long keys, anything unknown), and reports what it did so the dead-letter copy
can say so in ``x-header-notes``.
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Mapping
from typing import Any

# the names of the headers wa-trio writes (one place; docs/reliability.md lists them)
ERROR_CODE = "x-error-code"
ERROR_MESSAGE = "x-error-message"
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
FAILED_AT = "x-failed-at"
RETRY_COUNT = "x-retry-count"
LAST_ERROR_CODE = "x-last-error-code"
LAST_ERROR = "x-last-error"
HEADER_NOTES = "x-header-notes"
EXPIRES_AT = "x-expires-at"  # a job's deadline (Unix seconds), carried by its retry copies
#: not sent before (Unix seconds): a rest Meta asked for that is longer than the retry ladder
#: (131049: a day), carried by the wait queues like a ``send_at``
NOT_BEFORE = "x-not-before"
#: on a job a stuck neonize account handed to the Cloud API account: that account's name
FALLBACK_FROM = "x-wa-fallback-from"
DEATH = "x-death"  # RabbitMQ's dead-letter history: dropped, the broker rebuilds it

MAX_KEY_BYTES = 255
MAX_DEPTH = 8
_UINT32 = 1 << 32


def encodable(headers: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Headers our AMQP client can encode, and a note for each header changed or dropped."""
    notes: list[str] = []
    clean = _table(headers, "", notes, 0)
    return clean, notes


def _table(table: Mapping[Any, Any], prefix: str, notes: list[str], depth: int) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else str(raw_key)
        name = _short(prefix + key)
        if key == DEATH and depth == 0:
            continue
        if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            notes.append(f"{name}: key too long, dropped")
            continue
        if not utf8_ok(key):
            notes.append(f"{name}: key not UTF-8, dropped")
            continue
        converted = _value(value, name, notes, depth)
        if converted is not _DROP:
            clean[key] = converted
    return clean


_DROP = object()


def _value(value: Any, name: str, notes: list[str], depth: int) -> Any:
    if isinstance(value, bool | float | bytes):
        return value
    if isinstance(value, int):
        if 0 <= value < _UINT32:
            return value
        notes.append(f"{name}: integer out of range, sent as text")
        return str(value)
    if isinstance(value, str):
        if utf8_ok(value):
            return value
        notes.append(f"{name}: text not UTF-8, replaced")
        return value.encode("utf-8", "replace").decode("utf-8")
    if value is None:
        notes.append(f"{name}: null, dropped")
        return _DROP
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            notes.append(f"{name}: nested too deep, dropped")
            return _DROP
        return _table(value, name + ".", notes, depth + 1)
    if isinstance(value, list | tuple | decimal.Decimal | datetime.datetime):
        return json.dumps(value, default=str)
    notes.append(f"{name}: {type(value).__name__} not encodable, dropped")
    return _DROP


def utf8_ok(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no unpaired surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(name: str) -> str:
    return name if len(name) <= 64 else name[:61] + "..."


def notes_header(notes: list[str]) -> dict[str, str]:
    """``x-header-notes`` for a copy whose headers were changed (bounded), or nothing."""
    if not notes:
        return {}
    text = "; ".join(notes)
    return {HEADER_NOTES: text if len(text) <= 1024 else text[:1021] + "..."}


__all__ = ["encodable", "notes_header", "utf8_ok"]
