"""What the account knows about the people it writes to (sqlite3, blocking: call it from a
worker thread; the CLI uses it directly).

``contacts.db`` in the session folder holds two tables:

- ``optouts``: numbers that asked not to be written to (an inbound opt-out keyword, or
  ``wa-trio optout add``), with when, how, and whether the one answer went out;
- ``contacts``: per recipient, messages sent since they last wrote (``unanswered``) and when
  they last wrote; a row means a known chat (we sent to them, or they wrote to us).

It needs only the session folder, not a running worker: the worker reloads it when another
process changed it (``PRAGMA data_version``), within ``AccountSafety``'s refresh interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs


@attrs.frozen
class OptOut:
    number: str
    added_at: float
    source: str  # "inbound", or "cli:<user>"


@attrs.frozen
class Snapshot:
    optouts: frozenset[str]
    unanswered: dict[str, int]  # every known contact (0 when they answered last)
    #: when each contact was last sent to, for those of the last ``RECENT`` seconds
    last_sent: dict[str, float] = attrs.field(factory=dict)


RECENT = 86400.0  # the window of ``Snapshot.last_sent`` (Meta's daily messaging limits)


class Contacts(Protocol):
    """What account safety and the CLI need: this SQLite store, or ``postgres.PgContactStore``
    (WHATSAPP_STORE=postgresql: one opt-out list for every replica)."""

    def close(self) -> None: ...
    def data_version(self) -> int: ...
    def snapshot(self) -> Snapshot: ...
    def add_optout(self, number: str, source: str, now: float | None = None) -> bool: ...
    def remove_optout(self, number: str) -> bool: ...
    def optouts(self) -> list[OptOut]: ...
    def claim_reply(self, number: str) -> bool: ...
    def record(self, sent: Mapping[str, int], replies: Mapping[str, float], now: float) -> None: ...


__all__ = ["RECENT", "Contacts", "OptOut", "Snapshot"]
