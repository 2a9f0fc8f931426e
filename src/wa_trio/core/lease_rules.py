"""The lease of an account across replicas (WHATSAPP_STORE=postgresql://...): its timings and
names, decided without I/O (docs/scaling.md, "Replicas on several hosts").

The order that keeps a session from being live twice:

1. The holder pings its lease connection every ``PING_EVERY`` s. A ping that fails, or that
   has not answered ``FENCE_AFTER`` s after the last good one, fences the holder: its worker
   for that account is cancelled (the WhatsApp client stopped, the consumer's channel
   closed: its unacked jobs go back to the queue). So the holder has fenced itself at most
   ``FENCED_WITHIN`` s after its connection last worked.
2. The server releases the lock when the connection ends: at once when the holder's process
   dies (its kernel closes the socket), else when the server's TCP keepalives give up:
   ``SERVER_DROPS_AFTER`` s of silence, longer than ``FENCED_WITHIN``.
3. A standby queues for the lock (``WAIT_SLICE`` s at a time, so a stop ends it promptly):
   the server grants it the moment the holder's connection ends or releases it, so a
   hand-off (SIGTERM: the holder drains, then releases) and a kill -9 need no polling. Once it
   has it, a taker whose last holder did not release it waits ``takeover_grace``: what is
   left of ``FENCED_WITHIN`` since that holder's last heartbeat (the server's clock), for a
   holder whose connection the server ended while it still ran. A holder cut off by the
   network is dropped by the server only after ``SERVER_DROPS_AFTER`` s of silence, long after
   it fenced itself: no grace then; a holder killed -9 is dropped at once: at most
   ``FENCED_WITHIN`` s.
4. Belt and braces: each ledger write checks the lease epoch under a row lock; a holder that
   somehow still runs cannot start a send once the epoch moved on.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

RETRY_EVERY = 2.0  # a replica whose store failed tries again after this long
WAIT_SLICE = 1.0  # a standby queues for the lock this long at a time (a stop waits at most this)
PING_EVERY = 0.25
#: an account of several tries a lease it waits for this often (on its process's shared lease
#: connection: it never queues there, which would hold up the other accounts' pings)
TRY_EVERY = 0.1
FENCE_AFTER = 0.75  # no good ping for this long: fence
FENCED_WITHIN = FENCE_AFTER + PING_EVERY
TAKEOVER_GRACE = FENCED_WITHIN

SERVER_KEEPALIVE_IDLE = 3  # seconds (integers: libpq and the server take whole seconds)
SERVER_KEEPALIVE_INTERVAL = 1
SERVER_KEEPALIVE_COUNT = 2
SERVER_DROPS_AFTER = SERVER_KEEPALIVE_IDLE + SERVER_KEEPALIVE_INTERVAL * SERVER_KEEPALIVE_COUNT

#: advisory locks of wa-trio: (LOCK_NAMESPACE, lease id); (LOCK_NAMESPACE, 0) guards migrations
LOCK_NAMESPACE = int.from_bytes(hashlib.blake2b(b"wa-trio", digest_size=4).digest()) >> 1


def takeover_grace(inherited_from: str | None, silent_for: float | None) -> float:
    """Seconds a taker waits before it sends: none after a clean release (``inherited_from``
    None); else what is left of ``FENCED_WITHIN`` since the last holder's last heartbeat
    (``silent_for``; unknown: all of it)."""
    if inherited_from is None:
        return 0.0
    if silent_for is None:
        return FENCED_WITHIN
    return min(FENCED_WITHIN, max(0.0, FENCED_WITHIN - silent_for))


def must_fence(last_good_ping: float, now: float) -> bool:
    """Whether a holder whose lease connection last answered at ``last_good_ping`` must stop."""
    return now - last_good_ping >= FENCE_AFTER


#: the run-time setting that carries a session connection's lease epoch
EPOCH_GUC = "wa_trio.epoch"


def session_schema(account: str) -> str:
    """The PostgreSQL schema of an account's WhatsApp session (names are ``[a-z0-9-]``:
    ``-`` becomes ``_``, which names never hold, so two accounts never share one)."""
    return f"wa_trio_session_{account.replace('-', '_')}"


#: the server ends a session connection idle this long (ms; PostgreSQL 14's
#: ``idle_session_timeout``): whatsmeow opens a pool at every connect and never closes it, so
#: without it each connect held a backend for the life of the process; lib/pq takes the
#: server's FATAL as ``driver.ErrBadConn`` and database/sql retries on a new connection
#: (lib/pq ``error.go``, ``errRecover``), so whatsmeow never sees it
SESSION_IDLE_MS = 5000
IDLE_GUC = "idle_session_timeout"
IDLE_SINCE_SERVER = 140000  # server_version_num that knows it (older ones refuse the setting)


def session_store_url(store: str, account: str, epoch: int = 0, *, idle_ms: int = 0) -> str:
    """The URL neonize (whatsmeow, lib/pq) opens for ``account``'s session: the store's, with
    ``search_path`` set to the account's schema, under a lease ``wa_trio.epoch`` to its epoch
    and, when the server knows it, ``idle_session_timeout`` to ``idle_ms`` (lib/pq sends every
    parameter it does not know itself to the server as a run-time setting: lib/pq
    ``conn.go``, ``startup``): the fence on whatsmeow's tables refuses the writes of a
    connection whose epoch is over (migration 8)."""
    parts = urlsplit(store)
    ours = {"search_path", EPOCH_GUC, IDLE_GUC}
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ours]
    query.append(("search_path", session_schema(account)))
    if epoch:
        query.append((EPOCH_GUC, str(epoch)))
    if idle_ms:
        query.append((IDLE_GUC, str(idle_ms)))
    return urlunsplit(("postgres", parts.netloc, parts.path, urlencode(query), ""))
