"""Meta's webhook items already handled (issue 33): Meta redelivers a notification it did not
see answered, for up to a week, so each inbound message and status is recorded by id and a
redelivery is dropped, across a restart too. SQLite in the session folder (``webhooks.db``) or
``postgres.PgSeen`` (every replica of the account sees it): ``stores/open.webhook_seen``.
Blocking: the webhook keeps the recent ids in memory and writes new ones behind
(``transport/cloud_api/dedup.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Seen(Protocol):
    def recent(self, since: float, limit: int) -> list[str]:
        """The keys seen since ``since`` (epoch seconds), the newest ``limit``."""
        ...

    def add(self, keys: Sequence[tuple[str, float]]) -> None:
        """Record ``(key, seen_at)`` pairs (a key already there is kept)."""
        ...

    def prune(self, older_than: float) -> int: ...

    def close(self) -> None: ...


__all__ = ["Seen"]
