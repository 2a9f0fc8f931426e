"""What the HTTP send API accepted (issue 32), by job key: the body's hash (an
``Idempotency-Key`` used again with another body is a conflict, the rule the ledger applies),
the client, and the last status the worker reported for it (queued, sent with the WhatsApp id,
delivered, read, failed with a code, retrying), for ``GET /v1/messages/{job_key}``.

SQLite in the session folder (``api.db``), or ``postgres.PgApiRequests`` (every replica's API
sees it): chosen by ``stores/open.api_requests``. Blocking: call it from a worker thread (the
status update is one short UPDATE by primary key).
"""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Accepted:
    job_key: str
    body_hash: str
    client: str
    created_at: float
    status: str = "queued"
    code: str | None = None
    whatsapp_id: str | None = None
    updated_at: float = 0.0


class ApiRequests(Protocol):
    def accept(self, job_key: str, body_hash: str, client: str, now: float) -> Accepted | None:
        """Record a new request; the earlier one (None: this one is new)."""
        ...

    def forget(self, job_key: str) -> None:
        """Take back a request whose publish failed (the client may try the key again)."""
        ...

    def get(self, job_key: str) -> Accepted | None: ...

    def update(
        self,
        job_key: str,
        status: str,
        code: str | None,
        whatsapp_id: str | None,
        now: float,
        over: tuple[str, ...] | None = None,
    ) -> None:
        """Set the job's status (only over one of ``over``: a later event never moves it back;
        None: over any); a key the API never accepted is left alone."""
        ...

    def prune(self, older_than: float) -> int: ...

    def close(self) -> None: ...


__all__ = ["Accepted", "ApiRequests"]
