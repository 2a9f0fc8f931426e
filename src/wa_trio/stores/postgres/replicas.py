"""The replicas of one configuration (``core.balance``): each beats in ``wa_trio_replicas``
(migration 9) so the others know how many share the accounts; and which accounts' leases are
held now (a move is over once another replica holds it)."""

from __future__ import annotations

import contextlib
import uuid

import psycopg

from wa_trio.core.balance import ALIVE_WITHIN
from wa_trio.core.lease_rules import LOCK_NAMESPACE
from wa_trio.stores.postgres.db import store_errors
from wa_trio.stores.postgres.leases import holder_name
from wa_trio.stores.postgres.pool import Pooled

#: rows of replicas gone this long are removed by whoever beats
FORGET_AFTER = 3600.0


class ReplicaRegistry:
    """This replica's row in ``wa_trio_replicas`` (one connection, a worker thread's)."""

    def __init__(self, url: str, configuration: str) -> None:
        self.configuration = configuration
        self.name = f"{holder_name()}:{uuid.uuid4().hex[:8]}"  # two in one process: two rows
        self._db = Pooled(url)

    def beat(self) -> tuple[int, int]:
        """Say this replica is alive; how many replicas of its configuration are alive now
        (itself included) and its rank among them by age (0: the oldest).

        Raises:
            StoreError: the store cannot be reached.
        """
        with store_errors("beat in the replica registry"):
            self._db.execute(
                "INSERT INTO wa_trio_replicas (replica, configuration, started_at, seen_at) "
                "VALUES (%s, %s, now(), now()) ON CONFLICT (replica) DO UPDATE SET seen_at = now()",
                (self.name, self.configuration),
            )
            self._db.execute(
                "DELETE FROM wa_trio_replicas WHERE seen_at < now() - make_interval(secs => %s)",
                (FORGET_AFTER,),
            )
            alive = self._db.execute(
                "SELECT replica FROM wa_trio_replicas WHERE configuration = %s "
                "AND seen_at > now() - make_interval(secs => %s) ORDER BY started_at, replica",
                (self.configuration, ALIVE_WITHIN),
            ).fetchall()
        names = [str(row[0]) for row in alive]
        return max(1, len(names)), names.index(self.name) if self.name in names else 0

    def held_now(self) -> set[str]:
        """The accounts whose lease a connection holds now.

        Raises:
            StoreError: the store cannot be reached.
        """
        with store_errors("look at the leases"):
            rows = self._db.execute(
                "SELECT l.account FROM wa_trio_leases l JOIN pg_locks p ON p.objid = l.id "
                "WHERE p.locktype = 'advisory' AND p.classid = %s AND p.granted",
                (LOCK_NAMESPACE,),
            ).fetchall()
        return {str(row[0]) for row in rows}

    def leave(self) -> None:
        """Remove this replica's row (a clean stop: the others count without it at once)."""
        with contextlib.suppress(psycopg.Error):
            self._db.execute("DELETE FROM wa_trio_replicas WHERE replica = %s", (self.name,))
        with contextlib.suppress(psycopg.Error):
            self._db.close()


__all__ = ["FORGET_AFTER", "ReplicaRegistry"]
