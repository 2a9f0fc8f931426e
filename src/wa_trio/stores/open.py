"""The one store switch (issue 28): every store an account's worker or the CLI opens is chosen
here, from WHATSAPP_STORE. Unset: SQLite files in the account's session folder. A PostgreSQL
URL: the tables every replica of the account (and every account) shares.

Nothing else reads ``settings.store`` to choose a store; the exceptions are the PostgreSQL-only
parts (``accounts/replica.py`` and ``accounts/lease.py``: a lease exists only there; ``run.py``
choosing a replica; ``wa-trio accounts``, which lists the store's lease table). A test holds it.
Blocking calls: run them from a worker thread in trio code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.story import LedgerRow
from wa_trio.stores.api_requests import ApiRequests
from wa_trio.stores.contacts import Contacts
from wa_trio.stores.files import StartupError, lock_session, private_dir
from wa_trio.stores.ledger import LedgerStore
from wa_trio.stores.numbers import Numbers
from wa_trio.stores.seen import Seen
from wa_trio.stores.sqlite.api_requests import SqliteApiRequests
from wa_trio.stores.sqlite.contacts import ContactStore
from wa_trio.stores.sqlite.ledger import Ledger
from wa_trio.stores.sqlite.numbers import NumberCache
from wa_trio.stores.sqlite.outbox import SqliteOutbox
from wa_trio.stores.sqlite.seen import SqliteSeen

if TYPE_CHECKING:
    from wa_trio.stores.postgres import PgOutbox


def postgres(settings: Settings) -> str | None:
    """The PostgreSQL URL, or None for the SQLite files."""
    return settings.store


def contacts(settings: Settings) -> tuple[Contacts, Contacts | None]:
    """The account's contact store (opt-outs, unanswered counts), and the opt-out list it
    shares with other accounts when that is another store (several accounts on files: the
    session root's ``optouts.db``; on PostgreSQL one table serves everyone: None)."""
    if settings.store is not None:
        from wa_trio.stores.postgres import PgContactStore

        return PgContactStore(settings.store, settings.account_name), None
    store = ContactStore(settings.session_path / "contacts.db")
    if settings.shared_session_path is None:
        return store, None
    return store, ContactStore(settings.shared_session_path / "optouts.db")


def optout_list(settings: Settings) -> Contacts:
    """The opt-out list as ``wa-trio optout`` edits it (the same one the workers read)."""
    if settings.store is not None:
        from wa_trio.stores.postgres import PgContactStore, migrate

        migrate(settings.store)
        return PgContactStore(settings.store, settings.account_name)
    private_dir(settings.session_path)
    # several accounts share one opt-out list in the session folder (docs/scaling.md)
    name = "optouts.db" if settings.multi_account else "contacts.db"
    return ContactStore(settings.session_path / name)


def numbers(settings: Settings, ttl: float) -> Numbers:
    """The account's "is it on WhatsApp" cache: in the session folder, or in the store (every
    replica that runs the account sees it)."""
    if settings.store is not None:
        from wa_trio.stores.postgres import PgNumberCache

        return PgNumberCache(settings.store, settings.account_name, ttl)
    return NumberCache(settings.session_path / "numbers.db", ttl)


def webhook_outboxes(settings: Settings) -> tuple[SqliteOutbox, PgOutbox | None]:
    """The status-webhook outboxes: the local one in the ledger's file (events are committed
    there before each ack), and the one every replica of the account drains (PostgreSQL; the
    sink's relay moves events there), or None (the local one is delivered from)."""
    local = SqliteOutbox(settings.ledger_db, settings.status_webhook_max_pending)
    if settings.store is None:
        return local, None
    from wa_trio.stores.postgres import PgOutbox

    bound = settings.status_webhook_max_pending
    return local, PgOutbox(settings.store, settings.account_name, bound)


def local_ledger(settings: Settings) -> LedgerStore:
    """The account's send ledger on this volume (``ledger.db``; a replica's is the store's,
    fenced by its lease: ``accounts/replica.py``)."""
    return Ledger(settings.ledger_db)


def api_requests(settings: Settings) -> ApiRequests:
    """What the HTTP send API accepted: ``api.db`` in the session folder (with several
    accounts, the process's own: its root), or the store's table (every replica sees it)."""
    if settings.store is not None:
        from wa_trio.stores.postgres.api_requests import PgApiRequests

        return PgApiRequests(settings.store)
    root = settings.shared_session_path or settings.session_path
    return SqliteApiRequests(root / "api.db")


def webhook_seen(settings: Settings) -> Seen:
    """Meta's webhook items this account already handled: ``webhooks.db`` in its session
    folder, or the store's table (whichever replica holds the account sees them)."""
    if settings.store is not None:
        from wa_trio.stores.postgres.seen import PgSeen

        return PgSeen(settings.store, settings.account_name)
    private_dir(settings.session_path)
    return SqliteSeen(settings.session_path / "webhooks.db")


def ledger_rows(settings: Settings, keys: list[str]) -> list[LedgerRow]:
    """What every account's send ledger holds for these job keys (``wa-trio trace``, the
    console): the store's table, or each account's ``ledger.db`` that exists (none is made)."""
    if settings.store is not None:
        from wa_trio.stores.postgres.ledger import ledger_rows as pg_rows

        return pg_rows(settings.store, keys)
    found: list[LedgerRow] = []
    for account in settings.accounts:
        path = settings.for_account(account).ledger_db
        if not path.exists():
            continue
        ledger = Ledger(path)
        try:
            for key in keys:
                entry = ledger.get(key)
                if entry is not None:
                    row = (entry.key, entry.state, entry.whatsapp_id, entry.updated_at)
                    found.append(LedgerRow(account, *row))
        finally:
            ledger.close()
    return found


def session_database(settings: Settings) -> str:
    """What neonize opens for the account's WhatsApp session: the SQLite file, or the store's
    URL with the account's schema and an ``sslmode`` whatsmeow's driver takes (blocking: may
    ask the server)."""
    if settings.store is None:
        return str(settings.session_db)
    from wa_trio.stores.postgres.db import session_url

    return session_url(settings.store, settings.account_name, settings.lease_epoch)


def session_connect_budget(settings: Settings) -> int | None:
    """neonize connects this process may make before it restarts (None: no bound, SQLite or a
    server that ends idle sessions; see ``stores.postgres.db.connect_budget``)."""
    if settings.store is None:
        return None
    from wa_trio.stores.postgres.db import connect_budget

    return connect_budget(settings.store, len(settings.accounts))


def lease_holders(settings: Settings) -> dict[str, str]:
    """Which replica (host:pid) holds each account now: PostgreSQL's lease table; on files
    there is no lease (the folder's lock is this host's), so nothing."""
    if settings.store is None:
        return {}
    from wa_trio.stores.postgres import lease_table

    rows = lease_table(settings.store)
    return {row.account: str(row.holder) for row in rows if row.held and row.holder}


@contextlib.contextmanager
def claimed(
    settings: Settings, *, held: str, refuse: type[WaTrioError] = StartupError
) -> Iterator[None]:
    """Hold the account while the CLI changes its session (login, session import): the
    session folder's lock, or (PostgreSQL: migrated, its session schema made) the account's
    lease. Never two clients on one session.

    Raises:
        ``refuse`` (StartupError): a running worker holds the account (``held``: its line).
    """
    if settings.store is None:
        private_dir(settings.session_path)
        with lock_session(settings.session_path):
            yield
        return
    from wa_trio.stores.postgres import LeaseConnection, ensure_session_schema, migrate

    account = settings.account_name
    migrate(settings.store)
    ensure_session_schema(settings.store, account)
    lease = LeaseConnection(settings.store, account)
    try:
        if lease.try_take() is None:
            raise refuse(held)
        yield
        lease.release()
    finally:
        lease.close()


__all__ = [
    "api_requests",
    "claimed",
    "contacts",
    "lease_holders",
    "ledger_rows",
    "local_ledger",
    "numbers",
    "optout_list",
    "postgres",
    "session_connect_budget",
    "session_database",
    "webhook_outboxes",
]
