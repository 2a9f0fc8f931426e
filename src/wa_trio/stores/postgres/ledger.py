"""The send ledger in PostgreSQL (``ledger.Ledger``'s calls): ``wa_trio_sends``, a row per
(account, job key) with the lease epoch that wrote it. A ``step`` whose epoch is no longer the
account's current one commits its marks (what was really sent stays known) and refuses its
begins (``LeaseLost``): a fenced holder cannot start a send."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg

from wa_trio.core.outcome import Found, begin_writes
from wa_trio.core.story import LedgerRow
from wa_trio.stores.ledger import Begin, Entry, LedgerError, Mark, Shortcuts
from wa_trio.stores.postgres.db import LeaseLost, StoreError, connect, one_line
from wa_trio.stores.postgres.pool import Pooled

_UPSERT = (
    "INSERT INTO wa_trio_sends (account, key, state, whatsapp_id, updated_at, user_id, "
    "body_hash, epoch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account, key) DO "
    "UPDATE SET state = EXCLUDED.state, whatsapp_id = EXCLUDED.whatsapp_id, updated_at = "
    "EXCLUDED.updated_at, user_id = EXCLUDED.user_id, body_hash = EXCLUDED.body_hash, "
    "epoch = EXCLUDED.epoch, deaths = EXCLUDED.deaths"
)
_UPSERT_MARK = _UPSERT.replace(") VALUES (", ", deaths) VALUES (", 1).replace(
    "%s, %s)", "%s, %s, 0)", 1
)
_UPSERT_BEGIN = _UPSERT.replace(") VALUES (", ", deaths) VALUES (", 1).replace(
    "%s, %s)", "%s, %s, %s)", 1
)


class PgLedger(Shortcuts):
    """The send ledger of one account in PostgreSQL (blocking; ``ledger.Ledger``'s calls)."""

    inline = False  # a network round trip: AsyncLedger runs every call in a worker thread

    def __init__(self, url: str, account: str, epoch: int) -> None:
        self.account = account
        self.epoch = epoch
        self._lock = threading.Lock()
        try:
            self._db = Pooled(url)
        except StoreError as error:
            raise LedgerError(error.message) from None

    def get(self, key: str) -> Entry | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT state, whatsapp_id, updated_at FROM wa_trio_sends "
                "WHERE account = %s AND key = %s",
                (self.account, key),
            ).fetchone()
        return None if row is None else Entry(key, row[0], row[1], row[2])

    def peek(self, key: str) -> Found | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT state, body_hash, deaths FROM wa_trio_sends WHERE account = %s AND "
                "key = %s",
                (self.account, key),
            ).fetchone()
        return None if row is None else Found(row[0], row[1], row[2])

    def step(self, marks: list[Mark], begins: list[Begin]) -> list[Found | None]:
        """``ledger.Ledger.step``, fenced: begins are written only while this process's epoch
        is the account's (checked under a row lock in the same transaction)."""
        now = time.time()
        found: list[Found | None] = []
        lost = False
        with self._lock, _ledger_errors("write"), self._db.transaction():
            row = self._db.execute(
                "SELECT epoch FROM wa_trio_leases WHERE account = %s FOR SHARE", (self.account,)
            ).fetchone()
            lost = row is None or int(row[0]) != self.epoch
            if marks:
                self._db.cursor().executemany(
                    _UPSERT_MARK,
                    [
                        (
                            self.account,
                            m.key,
                            m.state,
                            m.whatsapp_id,
                            now,
                            m.user_id,
                            m.body_hash,
                            self.epoch,
                        )
                        for m in marks
                    ],
                )
            if not lost:
                for begin in begins:
                    found.append(self._begin(begin, now))
        if lost and begins:
            raise LeaseLost(
                f"the lease of account {self.account} moved past epoch {self.epoch}: another "
                "replica holds it"
            )
        return found

    def _begin(self, begin: Begin, now: float) -> Found | None:
        row = None
        if begin.check:
            row = self._db.execute(
                "SELECT state, body_hash, deaths FROM wa_trio_sends WHERE account = %s AND "
                "key = %s FOR UPDATE",
                (self.account, begin.key),
            ).fetchone()
        state = None if row is None else Found(row[0], row[1], row[2])
        deaths = begin_writes(state, begin.body_hash)
        if deaths is not None:
            self._db.execute(
                _UPSERT_BEGIN,
                (
                    self.account,
                    begin.key,
                    "sending",
                    None,
                    now,
                    None,
                    begin.body_hash,
                    self.epoch,
                    deaths,
                ),
            )
        return state

    def find_by_whatsapp_id(self, whatsapp_id: str) -> tuple[str, str | None] | None:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT key, user_id FROM wa_trio_sends WHERE account = %s AND whatsapp_id = %s",
                (self.account, whatsapp_id),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def prune(self, older_than: float) -> int:
        with self._lock, _ledger_errors("write"):
            cursor = self._db.execute(
                "DELETE FROM wa_trio_sends WHERE account = %s AND updated_at < %s",
                (self.account, time.time() - older_than),
            )
        return cursor.rowcount

    def count(self, state: str) -> int:
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT count(*) FROM wa_trio_sends WHERE account = %s AND state = %s",
                (self.account, state),
            ).fetchone()
        return int(row[0]) if row else 0

    def inherited_sending(self) -> int:
        """``sending`` rows written under an earlier epoch: the jobs a dead holder may have
        sent (its ambiguous window), which WHATSAPP_AMBIGUOUS decides when they come back."""
        with self._lock, _ledger_errors("read"):
            row = self._db.execute(
                "SELECT count(*) FROM wa_trio_sends WHERE account = %s AND state = 'sending' "
                "AND epoch < %s",
                (self.account, self.epoch),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()


@contextlib.contextmanager
def _ledger_errors(doing: str) -> Iterator[None]:
    """psycopg errors -> LedgerError: the pipeline holds the job and retries (health red)."""
    try:
        yield
    except psycopg.Error as error:
        raise LedgerError(
            f"the send ledger (PostgreSQL) cannot {doing}: {one_line(error)}"
        ) from None


def ledger_rows(url: str, keys: list[str]) -> list[LedgerRow]:
    """Every account's rows of these job keys, with the lease epoch that wrote each (the
    console's and ``wa-trio trace``'s look-up; a connection of its own, closed after)."""
    with contextlib.closing(connect(url, purpose="trace")) as db, _ledger_errors("read"):
        rows = db.execute(
            "SELECT account, key, state, whatsapp_id, updated_at, epoch FROM wa_trio_sends "
            "WHERE key = ANY(%s) ORDER BY account, key",
            (keys,),
        ).fetchall()
    return [LedgerRow(str(r[0]), str(r[1]), str(r[2]), r[3], float(r[4]), int(r[5])) for r in rows]
