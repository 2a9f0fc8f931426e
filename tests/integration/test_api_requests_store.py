"""The HTTP API's record of accepted jobs on both stores (SQLite ``api.db`` and PostgreSQL's
``wa_trio_api_requests``): a new key is accepted once, a repeat returns the first record, a
failed publish is taken back, status updates keep the WhatsApp id, old rows are pruned."""

from __future__ import annotations

from pathlib import Path

import pytest

from wa_trio.stores.api_requests import ApiRequests
from wa_trio.stores.sqlite.api_requests import SqliteApiRequests


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ApiRequests:
    if request.param == "sqlite":
        return SqliteApiRequests(tmp_path / "api.db")
    from wa_trio.stores.postgres import migrate
    from wa_trio.stores.postgres.api_requests import PgApiRequests

    url = request.getfixturevalue("pg_store")
    migrate(url)
    return PgApiRequests(url)


def test_the_record_of_accepted_jobs(store: ApiRequests) -> None:
    try:
        assert store.accept("k1", "hash-a", "billing", 100.0) is None
        again = store.accept("k1", "hash-b", "cron", 101.0)
        assert again is not None and (again.body_hash, again.client) == ("hash-a", "billing")
        store.update("k1", "sent", None, "WA1", 102.0)
        store.update("k1", "delivered", None, None, 103.0)  # a receipt has no id: kept
        got = store.get("k1")
        assert got is not None and (got.status, got.whatsapp_id) == ("delivered", "WA1")
        store.update("k1", "sent", None, None, 103.5, over=("queued", "retrying", "sent"))
        again = store.get("k1")  # a late "sent" does not move "delivered" back
        assert again is not None and again.status == "delivered"
        store.forget("k1")  # only a queued record is taken back
        assert store.get("k1") is not None
        assert store.accept("k2", "h", "billing", 104.0) is None
        store.forget("k2")
        assert store.get("k2") is None
        assert store.prune(102.5) == 1 and store.get("k1") is None
        assert store.get("unknown") is None
    finally:
        store.close()
