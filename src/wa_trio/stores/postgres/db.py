"""PostgreSQL connections, errors and our schema's versions (WHATSAPP_STORE=postgresql).

- ``connect``: autocommit connections with TCP keepalives on both ends (``KEEPALIVE``): a
  holder cut off from the server loses its lock once the server has missed its probes
  (``lease_rules.SERVER_DROPS_AFTER``), later than the holder fences itself (``lease_rules``).
- ``migrate``: our tables, versioned (``wa_trio_schema``), applied at start-up under a
  transaction-level advisory lock, so replicas starting together apply each version once
  (and once per process: its accounts start together).
- ``ensure_session_schema``: the schema whatsmeow keeps the account's WhatsApp session in
  (neonize opens ``Settings.session_database``, whose ``search_path`` names it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from wa_trio.core.errors import WaTrioError
from wa_trio.core.lease_rules import (
    IDLE_SINCE_SERVER,
    LOCK_NAMESPACE,
    SERVER_KEEPALIVE_COUNT,
    SERVER_KEEPALIVE_IDLE,
    SERVER_KEEPALIVE_INTERVAL,
    SESSION_IDLE_MS,
    session_schema,
    session_store_url,
)
from wa_trio.stores.ledger import LedgerError

#: libpq's keepalives (the client notices a dead server) and the server's (it notices a dead
#: client and drops its advisory locks); ``options`` sets the server's for this session
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": SERVER_KEEPALIVE_IDLE,
    "keepalives_interval": SERVER_KEEPALIVE_INTERVAL,
    "keepalives_count": SERVER_KEEPALIVE_COUNT,
    "options": (
        f"-c tcp_keepalives_idle={SERVER_KEEPALIVE_IDLE} "
        f"-c tcp_keepalives_interval={SERVER_KEEPALIVE_INTERVAL} "
        f"-c tcp_keepalives_count={SERVER_KEEPALIVE_COUNT}"
    ),
}


class LeaseLost(LedgerError):
    """This process's lease epoch is no longer the account's: another replica took it over."""

    code = "lease_lost"


class StoreError(WaTrioError):
    """PostgreSQL could not be reached or refused a statement."""

    code = "store_unavailable"


def connect(url: str, *, purpose: str) -> psycopg.Connection[Any]:
    """An autocommit connection (``application_name`` says what it is for)."""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=5,
            application_name=f"wa-trio {purpose}"[:63],
            **KEEPALIVE,
        )
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to WHATSAPP_STORE: {one_line(error)}") from None


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ------------------------------------------------------------------------------- migrations

#: version -> statements; append only (a released version never changes)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE wa_trio_leases (account TEXT PRIMARY KEY, id SERIAL UNIQUE, "
        "epoch BIGINT NOT NULL DEFAULT 0, holder TEXT, taken_at TIMESTAMPTZ)",
        "CREATE TABLE wa_trio_sends (account TEXT NOT NULL, key TEXT NOT NULL, "
        "state TEXT NOT NULL, whatsapp_id TEXT, updated_at DOUBLE PRECISION NOT NULL, "
        "user_id TEXT, body_hash TEXT, epoch BIGINT NOT NULL, PRIMARY KEY (account, key))",
        "CREATE INDEX wa_trio_sends_updated ON wa_trio_sends (updated_at)",
        "CREATE INDEX wa_trio_sends_wid ON wa_trio_sends (account, whatsapp_id)",
        "CREATE INDEX wa_trio_sends_sending ON wa_trio_sends (account, epoch) "
        "WHERE state = 'sending'",
    ),
    2: (
        "CREATE TABLE wa_trio_optouts (number TEXT PRIMARY KEY, added_at DOUBLE PRECISION "
        "NOT NULL, source TEXT NOT NULL, replied BOOLEAN NOT NULL DEFAULT FALSE)",
        "CREATE TABLE wa_trio_contacts (account TEXT NOT NULL, number TEXT NOT NULL, "
        "unanswered INTEGER NOT NULL DEFAULT 0, last_sent_at DOUBLE PRECISION, "
        "last_reply_at DOUBLE PRECISION, PRIMARY KEY (account, number))",
        "CREATE TABLE wa_trio_changes (name TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO wa_trio_changes VALUES ('contacts', 0)",
        "CREATE TABLE wa_trio_numbers (account TEXT NOT NULL, number TEXT NOT NULL, "
        "on_whatsapp BOOLEAN NOT NULL, jid_user TEXT NOT NULL, checked_at DOUBLE PRECISION "
        "NOT NULL, PRIMARY KEY (account, number))",
    ),
    3: (  # the holder's heartbeat: what ``wa-trio accounts`` shows
        "ALTER TABLE wa_trio_leases ADD COLUMN state TEXT, ADD COLUMN linked TEXT, "
        "ADD COLUMN seen_at TIMESTAMPTZ",
    ),
    4: (  # signed webhooks: delivered by whichever replica holds the account
        "CREATE TABLE wa_trio_webhook_outbox (id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, "
        "job_key TEXT NOT NULL, body BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, next_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX wa_trio_webhook_outbox_due ON wa_trio_webhook_outbox (account, next_at)",
    ),
    5: (  # crash loops: how often a job was found ``sending`` (a worker died holding it)
        "ALTER TABLE wa_trio_sends ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0",
    ),
    6: (  # the HTTP send API: what it accepted, by job key (issue 32)
        "CREATE TABLE wa_trio_api_requests (key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, "
        "client TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, "
        "code TEXT, whatsapp_id TEXT, updated_at DOUBLE PRECISION NOT NULL)",
    ),
    7: (  # Meta's webhook items already handled (redeliveries are dropped; issue 33)
        "CREATE TABLE wa_trio_webhook_seen (account TEXT NOT NULL, key TEXT NOT NULL, "
        "seen_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (account, key))",
        "CREATE INDEX wa_trio_webhook_seen_at ON wa_trio_webhook_seen (seen_at)",
    ),
    8: (  # the fence on whatsmeow's tables (issue 34): a write from a connection carrying an
        # older lease epoch (``wa_trio.epoch``, set in neonize's URL) is refused; the holder
        # puts it on each table of its session schema (``leases.LeaseConnection.fence``)
        "CREATE FUNCTION wa_trio_fence() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path FROM CURRENT AS $$ "
        "DECLARE mine text := current_setting('wa_trio.epoch', true); "
        "BEGIN "
        "IF coalesce(mine, '') <> '' AND mine::bigint IS DISTINCT FROM "
        "(SELECT epoch FROM wa_trio_leases WHERE account = TG_ARGV[0]) THEN "
        "RAISE EXCEPTION 'wa-trio: account % moved past lease epoch %', TG_ARGV[0], mine "
        "USING ERRCODE = '42501'; "
        "END IF; "
        "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; "
        "RETURN NEW; "
        "END $$",
    ),
    9: (  # replicas of one configuration, to spread its accounts over them (issue 34)
        "CREATE TABLE wa_trio_replicas (replica TEXT PRIMARY KEY, configuration TEXT NOT NULL, "
        "started_at TIMESTAMPTZ NOT NULL, seen_at TIMESTAMPTZ NOT NULL)",
    ),
}
_MIGRATION_LOCK = (LOCK_NAMESPACE, 0)  # the accounts' leases use ids from 1


_migrated: dict[str, int] = {}  # url -> version, of the stores this process has migrated
_migrating = threading.Lock()


def migrate(url: str) -> int:
    """``apply_migrations`` once per process and store: the accounts of a process start
    together (200 of them each migrating held 200 threads on the advisory lock)."""
    with _migrating:
        if url not in _migrated:
            _migrated[url] = apply_migrations(url)
        return _migrated[url]


def apply_migrations(url: str) -> int:
    """Apply the versions this database lacks, under an advisory lock (replicas starting at
    once wait for each other); the schema version now."""
    with contextlib.closing(connect(url, purpose="migrate")) as db, store_errors("migrate"):
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
            db.execute("CREATE TABLE IF NOT EXISTS wa_trio_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM wa_trio_schema").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO wa_trio_schema (version) VALUES (%s)", (version,))
                current = version
        return current


def ensure_session_schema(url: str, account: str) -> None:
    """The schema whatsmeow creates its tables in for ``account`` (it cannot create it)."""
    schema = session_schema(account)
    with contextlib.closing(connect(url, purpose="session schema")) as db, store_errors("migrate"):
        db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


@contextlib.contextmanager
def store_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as error:
        raise StoreError(f"WHATSAPP_STORE cannot {doing}: {one_line(error)}") from None


#: sslmode values whatsmeow's driver (lib/pq) knows; psycopg (libpq) knows these and two more
LIB_PQ_SSLMODES = frozenset({"disable", "require", "verify-ca", "verify-full"})


def session_url(url: str, account: str, epoch: int = 0) -> str:
    """The URL neonize opens for ``account``'s session, with an ``sslmode`` both drivers take
    and the server's idle timeout where it has one (``lease_rules.SESSION_IDLE_MS``).

    Without an ``sslmode`` (or with libpq's ``prefer``/``allow``, which lib/pq refuses),
    psycopg tries TLS and falls back to plain while lib/pq demands TLS: a server without TLS
    then works for the ledger and the leases and never for the session. So ask the server the
    way psycopg does and pin what it negotiated (``require`` over TLS, else ``disable``)."""
    mode = dict(parse_qsl(urlsplit(url).query)).get("sslmode")
    with contextlib.closing(connect(url, purpose="session url")) as db, store_errors("connect"):
        tls = bool(db.pgconn.ssl_in_use)
        idle = db.pgconn.server_version >= IDLE_SINCE_SERVER
    session = session_store_url(url, account, epoch, idle_ms=SESSION_IDLE_MS if idle else 0)
    if mode in LIB_PQ_SSLMODES:
        return session
    parts = urlsplit(session)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "sslmode"]
    query.append(("sslmode", "require" if tls else "disable"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def connect_budget(url: str, accounts: int) -> int | None:
    """How many neonize connects this process may make on the store before it restarts
    (None: no bound).

    whatsmeow opens a new connection pool at each client's connect and neonize never closes
    it: one server backend per connect, held until the process exits (measured: 4 connects,
    4 backends) unless the server ends idle sessions (PostgreSQL 14 and later:
    ``session_url`` sets ``idle_session_timeout``; a left pool's backend goes 5 s after its
    last use, measured). On an older server: a quarter of its ``max_connections``, but never
    fewer than one connect per account and one spare."""
    with (
        contextlib.closing(connect(url, purpose="budget")) as db,
        store_errors("read max_connections"),
    ):
        if db.pgconn.server_version >= IDLE_SINCE_SERVER:
            return None
        row = db.execute("SHOW max_connections").fetchone()
    limit = int(row[0]) if row else 100
    return max(accounts + 1, limit // 4)
