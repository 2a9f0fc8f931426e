"""PostgreSQL, the store for replicas (WHATSAPP_STORE=postgresql://...): **the only psycopg
importer** (this package). Blocking (psycopg 3, sync): call it from a worker thread.

- ``db``: connections (keepalives), errors, versioned migrations under an advisory lock, the
  account's session schema;
- ``pool``: the process's bounded pool of connections for its stores (psycopg_pool);
- ``leases``: an account's lease (advisory lock + epoch) on a connection of its own, or on
  one its process's accounts share (``LeaseLines``);
- ``ledger``: the send ledger, fenced by the lease epoch;
- ``replicas``: the replicas of one configuration (how many share its accounts);
- ``contacts``: the opt-out list (shared by every account and replica), unanswered counts,
  the "is it on WhatsApp" cache.
"""

from wa_trio.stores.postgres.contacts import PgContactStore, PgNumberCache
from wa_trio.stores.postgres.db import (
    MIGRATIONS,
    LeaseLost,
    StoreError,
    apply_migrations,
    connect,
    ensure_session_schema,
    migrate,
)
from wa_trio.stores.postgres.leases import LeaseConnection, LeaseLines, holder_name, lease_table
from wa_trio.stores.postgres.ledger import PgLedger
from wa_trio.stores.postgres.outbox import PgOutbox
from wa_trio.stores.postgres.replicas import ReplicaRegistry

__all__ = [
    "MIGRATIONS",
    "LeaseConnection",
    "LeaseLines",
    "LeaseLost",
    "PgContactStore",
    "PgLedger",
    "PgNumberCache",
    "PgOutbox",
    "ReplicaRegistry",
    "StoreError",
    "apply_migrations",
    "connect",
    "ensure_session_schema",
    "holder_name",
    "lease_table",
    "migrate",
]
