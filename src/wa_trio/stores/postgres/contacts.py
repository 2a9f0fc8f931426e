"""What the accounts know about the people they write to, in PostgreSQL: the opt-out list
(one for every account and every replica: a STOP to one account stops them all, wherever it
runs), and each account's unanswered counts and "is it on WhatsApp" cache (every replica that
runs the account sees them). The same calls as ``contacts.ContactStore`` and
``number_cache.NumberCache``.

``data_version`` follows SQLite's ``PRAGMA data_version``: it changes when *another* connection
changed the opt-outs or counts (``wa_trio_changes`` counts every write; our own writes are
recognised by the version they return), so ``AccountSafety`` reloads only then.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping

import psycopg

from wa_trio.stores.contacts import RECENT, OptOut, Snapshot
from wa_trio.stores.numbers import Resolution
from wa_trio.stores.postgres.db import store_errors
from wa_trio.stores.postgres.pool import Pooled

_BUMP = "UPDATE wa_trio_changes SET version = version + 1 WHERE name = 'contacts' RETURNING version"


class PgContactStore:
    def __init__(self, url: str, account: str) -> None:
        self.account = account
        self._lock = threading.Lock()
        self._db = Pooled(url)
        self._seen = self._version()
        self._dirty = False
        self._token = 0

    def _version(self) -> int:
        with store_errors("read the contacts"):
            row = self._db.execute(
                "SELECT version FROM wa_trio_changes WHERE name = 'contacts'"
            ).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, db: Pooled) -> None:
        row = db.execute(_BUMP).fetchone()
        version = int(row[0]) if row else 0
        if version != self._seen + 1:  # someone else wrote since we last looked
            self._dirty = True
        self._seen = version

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()

    def data_version(self) -> int:
        with self._lock:
            version = self._version()
            if version != self._seen or self._dirty:
                self._seen, self._dirty = version, False
                self._token += 1
            return self._token

    def snapshot(self) -> Snapshot:
        with self._lock, store_errors("read the contacts"):
            optouts = frozenset(
                row[0] for row in self._db.execute("SELECT number FROM wa_trio_optouts")
            )
            counts = dict(
                self._db.execute(
                    "SELECT number, unanswered FROM wa_trio_contacts WHERE account = %s",
                    (self.account,),
                ).fetchall()
            )
            recent = self._db.execute(
                "SELECT number, last_sent_at FROM wa_trio_contacts WHERE account = %s AND "
                "last_sent_at >= %s",
                (self.account, time.time() - RECENT),
            ).fetchall()
        return Snapshot(optouts, counts, dict(recent))

    def add_optout(self, number: str, source: str, now: float | None = None) -> bool:
        with self._lock, store_errors("write the opt-outs"), self._db.transaction():
            cursor = self._db.execute(
                "INSERT INTO wa_trio_optouts (number, added_at, source) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (number, time.time() if now is None else now, source),
            )
            if cursor.rowcount == 1:
                self._bump(self._db)
            return cursor.rowcount == 1

    def remove_optout(self, number: str) -> bool:
        with self._lock, store_errors("write the opt-outs"), self._db.transaction():
            cursor = self._db.execute("DELETE FROM wa_trio_optouts WHERE number = %s", (number,))
            if cursor.rowcount == 1:
                self._bump(self._db)
            return cursor.rowcount == 1

    def optouts(self) -> list[OptOut]:
        with self._lock, store_errors("read the opt-outs"):
            rows = self._db.execute(
                "SELECT number, added_at, source FROM wa_trio_optouts ORDER BY added_at"
            ).fetchall()
        return [OptOut(*row) for row in rows]

    def claim_reply(self, number: str) -> bool:
        with self._lock, store_errors("write the opt-outs"):
            cursor = self._db.execute(
                "UPDATE wa_trio_optouts SET replied = TRUE WHERE number = %s AND NOT replied",
                (number,),
            )
            return cursor.rowcount == 1

    def record(self, sent: Mapping[str, int], replies: Mapping[str, float], now: float) -> None:
        with self._lock, store_errors("write the contacts"), self._db.transaction():
            if sent:
                self._db.cursor().executemany(
                    "INSERT INTO wa_trio_contacts (account, number, unanswered, last_sent_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (account, number) DO UPDATE SET "
                    "unanswered = wa_trio_contacts.unanswered + EXCLUDED.unanswered, "
                    "last_sent_at = EXCLUDED.last_sent_at",
                    [(self.account, number, count, now) for number, count in sent.items()],
                )
            if replies:
                self._db.cursor().executemany(
                    "INSERT INTO wa_trio_contacts (account, number, unanswered, last_reply_at) "
                    "VALUES (%s, %s, 0, %s) ON CONFLICT (account, number) DO UPDATE SET "
                    "unanswered = 0, last_reply_at = EXCLUDED.last_reply_at",
                    [(self.account, number, at) for number, at in replies.items()],
                )
            self._bump(self._db)


class PgNumberCache:
    """``number_cache.NumberCache`` of one account in PostgreSQL (every replica sees it)."""

    def __init__(self, url: str, account: str, ttl: float) -> None:
        self.account = account
        self.ttl = ttl
        self._lock = threading.Lock()
        self._db = Pooled(url)

    def get(self, number: str, now: float | None = None) -> Resolution | None:
        now = time.time() if now is None else now
        with self._lock, store_errors("read the number cache"):
            row = self._db.execute(
                "SELECT on_whatsapp, jid_user, checked_at FROM wa_trio_numbers "
                "WHERE account = %s AND number = %s",
                (self.account, number),
            ).fetchone()
        if row is None or now - row[2] > self.ttl:
            return None
        return Resolution(number, bool(row[0]), row[1], row[2])

    def put(self, resolution: Resolution) -> None:
        with self._lock, store_errors("write the number cache"):
            self._db.execute(
                "INSERT INTO wa_trio_numbers VALUES (%s, %s, %s, %s, %s) ON CONFLICT "
                "(account, number) DO UPDATE SET on_whatsapp = EXCLUDED.on_whatsapp, "
                "jid_user = EXCLUDED.jid_user, checked_at = EXCLUDED.checked_at",
                (
                    self.account,
                    resolution.number,
                    resolution.on_whatsapp,
                    resolution.jid_user,
                    resolution.checked_at,
                ),
            )

    def close(self) -> None:
        with self._lock, contextlib.suppress(psycopg.Error):
            self._db.close()


__all__ = ["PgContactStore", "PgNumberCache"]
