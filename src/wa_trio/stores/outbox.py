"""The signed-webhook outbox, as the sink delivers from it: the ``Outbox`` protocol and its
``Pending`` record. Two backends: ``stores/sqlite/outbox.py`` (the ledger's file, on this volume)
and ``stores/postgres/outbox.py`` (the account's, shared by its replicas); ``stores/open.py``
chooses. Blocking: ``inline`` says whether a call may run on the trio thread (a local commit)
or belongs in a worker thread (across the network).
"""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Pending:
    """One event waiting for delivery."""

    id: int
    job_key: str
    body: bytes
    attempts: int


class Outbox(Protocol):
    """What delivery needs of an outbox (events in per job order, retried with a delay)."""

    inline: bool

    def next_due(self, now: float) -> Pending | None:
        """The oldest due event whose job has no older event pending (order per job)."""

    def next_time(self) -> float | None:
        """When the next event is due (None: nothing pending)."""

    def remove(self, event_id: int) -> None: ...

    def later(self, event_id: int, next_at: float) -> None:
        """One more attempt counted; due again at ``next_at``."""

    def stats(self) -> tuple[int, float | None]:
        """(pending events, creation time of the oldest)."""

    def close(self) -> None: ...


__all__ = ["Outbox", "Pending"]
