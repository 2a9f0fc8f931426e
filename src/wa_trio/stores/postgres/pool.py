"""The process's connections for its stores (issue 34): one bounded pool per store URL
(psycopg_pool), shared by every account's ledger, contacts, webhook outbox, the webhook
de-duplication, the API's requests and the lease fence. A process of 200 accounts then holds
``POOL_SIZE`` connections for them, not three per account (docs/scaling.md, "Connections").

``Pooled`` stands where a store held its own connection: a statement borrows a connection for
itself (its rows read before it goes back), ``transaction()`` for the whole transaction. The
pool is opened by its first user (failing in one line when the store cannot be reached) and
closed by its last.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from wa_trio.stores.postgres.db import KEEPALIVE, StoreError, one_line

#: most connections one process's stores hold on one server (a statement waits for one);
#: sized by the bench: 8 serve 200 accounts' sends with the pool's wait under 1 %
POOL_SIZE = 8
#: seconds a statement waits for a connection: short, so a store outage fails a statement
#: (and a shielded retry loop can see the fence) about as fast as a dead connection did
POOL_WAIT = 2.0
OPEN_WAIT = 5.0  # seconds the first user waits for the first connection (connect_timeout too)
POOL_IDLE = 60.0  # an idle connection above the first one closes after this long

_guard = threading.Lock()
_pools: dict[str, tuple[ConnectionPool, int]] = {}  # url -> (pool, users)


def borrow(url: str) -> ConnectionPool:
    """The pool of ``url``, opened by its first user (one more user: ``give_back`` each).

    Raises:
        StoreError: the first connection cannot be made within ``OPEN_WAIT``.
    """
    with _guard:
        if url in _pools:
            pool, users = _pools[url]
            _pools[url] = (pool, users + 1)
            return pool
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=POOL_WAIT,
            max_idle=POOL_IDLE,
            name="wa-trio stores",
            open=False,
            kwargs={
                "autocommit": True,
                "connect_timeout": int(OPEN_WAIT),
                "application_name": "wa-trio stores",
                **KEEPALIVE,
            },
        )
        try:
            pool.open(wait=True, timeout=OPEN_WAIT)
        except psycopg.Error as error:
            pool.close(timeout=0)
            raise StoreError(f"cannot connect to WHATSAPP_STORE: {one_line(error)}") from None
        _pools[url] = (pool, 1)
        return pool


def give_back(url: str) -> None:
    """One user less; the last one closes the pool (its connections end)."""
    with _guard:
        pool, users = _pools[url]
        if users > 1:
            _pools[url] = (pool, users - 1)
            return
        del _pools[url]
    pool.close(timeout=1.0)  # its workers: a connect under way is dropped


def open_pools() -> dict[str, int]:
    """url -> users, of the pools open now (tests and the bench)."""
    with _guard:
        return {url: users for url, (_pool, users) in _pools.items()}


@attrs.frozen
class Rows:
    """A statement's result, read before its connection went back to the pool."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Pooled:
    """Where a store held its own connection: statements on the process's pool."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool = borrow(url)
        self._in = threading.local()  # the connection of this thread's open transaction
        self._closed = False

    def execute(self, query: str | sql.Composed, params: Sequence[Any] | None = None) -> Rows:
        pinned: psycopg.Connection[Any] | None = getattr(self._in, "db", None)
        if pinned is not None:
            return _read(pinned.execute(query, params))
        with self._pool.connection() as db:
            return _read(db.execute(query, params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One connection for a transaction: statements in it (this thread's) run on it."""
        with self._pool.connection() as db, db.transaction():
            self._in.db = db
            try:
                yield db
            finally:
                self._in.db = None

    def cursor(self) -> psycopg.Cursor[Any]:
        """A cursor of the open transaction (``executemany``)."""
        pinned: psycopg.Connection[Any] | None = getattr(self._in, "db", None)
        if pinned is None:
            raise RuntimeError("Pooled.cursor() outside transaction()")
        return pinned.cursor()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            give_back(self._url)


def _read(cursor: psycopg.Cursor[Any]) -> Rows:
    rows = cursor.fetchall() if cursor.description is not None else []
    return Rows(rows, cursor.rowcount)


__all__ = ["POOL_SIZE", "Pooled", "Rows", "borrow", "give_back", "open_pools"]
