"""neonize connects on a PostgreSQL session store, counted for the whole process (issue 27)."""

from __future__ import annotations

import attrs

from wa_trio.core.errors import TransportError


@attrs.define
class StoreConnects:
    """neonize connects on a PostgreSQL session store, counted for the whole process.

    whatsmeow opens a new connection pool at each client's connect (goneonize/main.go
    ``Neonize`` -> ``sqlstore.New``) and nothing closes it: one server backend per connect until
    the process exits (measured here: 4 connects, 4 backends; tests/integration/
    test_neonize_postgres.py). Every account draws on one budget (``stores.open.
    session_connect_budget``); the connect past it raises, and the process ends for a clean
    restart while the server still has room, instead of filling ``max_connections`` and
    fencing every account. A server that ends idle sessions (PostgreSQL 14 and later,
    ``lease_rules.SESSION_IDLE_MS``) frees a left pool's backend: no bound then."""

    limit: int | None = None
    made: int = 0

    def bound(self, limit: int | None) -> None:
        if limit is not None:
            self.limit = limit if self.limit is None else min(self.limit, limit)

    def take(self) -> None:
        if self.limit is not None and self.made >= self.limit:
            raise TransportError(
                f"{self.made} WhatsApp connects on the PostgreSQL store in this process, each "
                "holding a server connection neonize never closes; exiting for a clean restart "
                f"(the bound is {self.limit}: a quarter of the server's max_connections)"
            )
        self.made += 1


STORE_CONNECTS = StoreConnects()


__all__ = ["STORE_CONNECTS", "StoreConnects"]
