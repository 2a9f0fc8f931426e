"""One job in hand, and its identity (pure helpers; no I/O).

A job's *key* is what the send ledger, status events and logs know it by: the publisher's
``message_id`` when it is short enough to be a wire field of ours, else a hash. Everything here
is bounded: a publisher controls the message id, the headers and the body, and none of them may
reach an encoder, a cache key or a file name unbounded (a status event's message id is
``<key>:<status>`` and must fit AMQP's 255-byte short string).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

MAX_KEY_BYTES = 128  # keys longer than this (in UTF-8) are hashed; see job_key
MAX_TRACE_CHARS = 128


def body_hash(body: bytes) -> str:
    """The body's fingerprint (kept in the ledger to spot a reused message_id)."""
    return hashlib.sha256(body).hexdigest()


def job_key(message_id: str | None, body: bytes) -> str:
    """The job's identity: the publisher's message_id, else a hash of the body.

    A message_id longer than ``MAX_KEY_BYTES`` is replaced by ``mid-sha256:<hash>`` so that
    every field derived from the key stays within AMQP's short-string limit.
    """
    if message_id:
        if len(message_id.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES:
            return message_id
        digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
        return "mid-sha256:" + digest
    return "sha256:" + body_hash(body)


def trace_id_of(headers: Mapping[str, Any], correlation_id: str | None) -> str | None:
    """The ``trace_id`` header (or the correlation id), as bounded text, for logs."""
    trace = headers.get("trace_id") or correlation_id
    if isinstance(trace, bytes):
        trace = trace.decode("utf-8", "replace")
    return None if trace is None else str(trace)[:MAX_TRACE_CHARS]


def retry_count(headers: Mapping[str, Any]) -> int:
    """Retries already spent (``x-retry-count``); anything unreadable counts as 0."""
    value = headers.get("x-retry-count", 0)
    if isinstance(value, bool):
        return 0
    try:
        return min(max(0, int(value)), 1_000_000)
    except (TypeError, ValueError, OverflowError):
        return 0


def not_before(headers: Mapping[str, Any]) -> float | None:
    """``x-not-before`` (Unix seconds) when it is a sane time; None otherwise."""
    value = headers.get("x-not-before")
    if isinstance(value, bool) or not isinstance(value, (int, float, str, bytes)):
        return None
    try:
        moment = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return moment if 0 < moment < 1e11 else None


def earliest(headers: Mapping[str, Any], send_at: float | None) -> float | None:
    """When a job may go: its ``send_at``, or a rest Meta asked for (``x-not-before``),
    whichever is later (None: now)."""
    times = [t for t in (send_at, not_before(headers)) if t is not None]
    return max(times, default=None)


@attrs.define
class Job:
    """A delivery in hand: the AMQP delivery, its eliot action and its identity."""

    delivery: Any  # amqp.Delivery (kept untyped here so this module imports no AMQP client)
    action: Any  # eliot.Action
    received_at: float
    key: str
    body_hash: str

    @property
    def tag(self) -> int:
        return int(self.delivery.delivery_tag)


__all__ = ["MAX_KEY_BYTES", "Job", "body_hash", "job_key", "retry_count", "trace_id_of"]
