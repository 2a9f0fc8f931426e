"""Meta's redelivered webhook items are handled once, across a restart (issue 33):
``transport/cloud_api/dedup.WebhookSeen`` on the real SQLite store."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from wa_trio.stores.sqlite.seen import SqliteSeen
from wa_trio.transport.cloud_api.dedup import KEEP_FOR, WebhookSeen


async def test_a_key_is_first_once_and_still_known_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.db"
    seen = WebhookSeen(partial(SqliteSeen, path))
    async with trio.open_nursery() as nursery:
        await nursery.start(seen.run)
        assert seen.first("message:wamid.1") and seen.first("status:wamid.2:read")
        assert not seen.first("message:wamid.1")
        nursery.cancel_scope.cancel()  # the last keys are written on the way out
    assert seen.duplicates == 1
    again = WebhookSeen(partial(SqliteSeen, path))
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)  # loads the recent keys before it answers
        assert not again.first("message:wamid.1")
        assert not again.first("status:wamid.2:read")
        assert again.first("status:wamid.2:delivered")
        nursery.cancel_scope.cancel()


def test_the_store_forgets_what_is_older_than_a_week(tmp_path: Path) -> None:
    store = SqliteSeen(tmp_path / "webhooks.db")
    now = 1_800_000_000.0
    store.add([("old", now - KEEP_FOR - 1), ("new", now - 60), ("new", now)])
    assert store.prune(now - KEEP_FOR) == 1
    assert store.recent(now - KEEP_FOR, 10) == ["new"]
    store.close()
