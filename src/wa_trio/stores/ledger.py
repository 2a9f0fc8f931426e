"""The send ledger: what was sent, so that a redelivered job is not sent twice.

Two backends: ``stores/sqlite/ledger.py`` (WAL mode at WHATSAPP_SESSION_PATH/ledger.db, apart
from the WhatsApp session) and ``stores/postgres/ledger.py`` (fenced by the lease).
One row a job key: ``sending`` is written (committed) before the send, ``sent`` with the WhatsApp
message id after WhatsApp accepted it, and only then is the job acked. ``failed`` marks a send
that WhatsApp refused (a retry may send it). Each row keeps the body's hash, so a message_id
reused for another body is caught (``outcome.decide``). The rules that read it are pure
(``outcome.decide``); the I/O here is blocking. ``AsyncLedger`` runs the per-job commit
(``step``) on the trio thread (a WAL commit without fsync; a thread hop would cost more than
the commit) and everything else (open, look-ups for receipts, prune, close) in a worker
thread, one call at a time.

``step`` is the one write: it commits the outcome of the send just done and the ``sending`` row
of the next job in one transaction, so a job costs one commit and the ambiguous window never
spans more than the one send in flight. That window: the process dies after WhatsApp accepted a
message and before its ``sent`` was committed. The row then says ``sending``; WHATSAPP_AMBIGUOUS
decides (resend: maybe a duplicate; skip: maybe a loss). docs/reliability.md also covers the
other window, a send WhatsApp did not answer in time.

A failing disk (full, read-only, gone) raises ``LedgerError``; the pipeline then holds the job,
reports it on /healthz and tries again: nothing is sent without its ``sending`` row.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio

from wa_trio.core.errors import WaTrioError
from wa_trio.core.outcome import Found


class LedgerError(WaTrioError):
    """The ledger could not read or write (disk full, read-only, removed)."""

    code = "ledger_unavailable"


@attrs.frozen
class Entry:
    key: str
    state: str
    whatsapp_id: str | None
    updated_at: float


@attrs.frozen
class Begin:
    """Start a job: read its row (when ``check``) and write ``sending``, unless already sent."""

    key: str
    check: bool
    body_hash: str | None = None


@attrs.frozen
class Mark:
    """Record how a send ended (``sent`` with WhatsApp's id, or ``failed``)."""

    key: str
    state: str
    whatsapp_id: str | None = None
    user_id: str | None = None
    body_hash: str | None = None


class LedgerStore(Protocol):
    """What ``AsyncLedger`` needs of a blocking ledger: this SQLite one, or ``pg.PgLedger``."""

    #: whether ``step`` is cheap enough for the trio thread (a local commit; not a round trip)
    inline: bool

    def get(self, key: str) -> Entry | None: ...
    def peek(self, key: str) -> Found | None: ...
    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]: ...
    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None: ...
    def prune(self, older_than: float) -> int: ...
    def count(self, state: str) -> int: ...
    def close(self) -> None: ...


class Shortcuts:
    """One begin, one mark: a ``step`` of one (tests and the CLI)."""

    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        raise NotImplementedError

    def begin(self, key: str, *, check: bool, body_hash: str | None = None) -> Found | None:
        return self.step([], [Begin(key, check, body_hash)])[0]

    def mark(
        self, key: str, state: str, whatsapp_id: str | None = None, user_id: str | None = None
    ) -> None:
        self.step([Mark(key, state, whatsapp_id, user_id)], [])


class AsyncLedger:
    """The ledger from trio: each call in a worker thread, one at a time."""

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger
        self._limiter = trio.CapacityLimiter(1)

    async def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        """On the trio thread: a commit in WAL mode with ``synchronous=NORMAL`` is a write to
        the OS page cache (tens of microseconds, no fsync), far cheaper than the thread hop it
        would cost per job on the hot path (measured: docs/performance.md). Held by the same
        limiter, so it never interleaves with a call running in a worker thread. A ledger
        across the network (PostgreSQL) steps in a worker thread like every other call."""
        if not self.ledger.inline:
            return await trio.to_thread.run_sync(
                self.ledger.step, marks, begins, limiter=self._limiter
            )
        try:
            self._limiter.acquire_nowait()  # the common case: no scheduling pass
        except trio.WouldBlock:
            await self._limiter.acquire()
        try:
            return self.ledger.step(marks, begins)
        finally:
            self._limiter.release()

    async def peek(self, key: str) -> Found | None:
        return await trio.to_thread.run_sync(self.ledger.peek, key, limiter=self._limiter)

    async def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        return await trio.to_thread.run_sync(
            self.ledger.find_by_whatsapp_id, whatsapp_id, limiter=self._limiter
        )

    async def prune(self, older_than: float) -> int:
        return await trio.to_thread.run_sync(self.ledger.prune, older_than, limiter=self._limiter)

    async def get(self, key: str) -> Entry | None:
        return await trio.to_thread.run_sync(self.ledger.get, key, limiter=self._limiter)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.ledger.close, limiter=self._limiter)
