"""Meta's redelivered webhook items, dropped (issue 33). Meta sends a notification again when
it did not see our 200 (for up to ``KEEP_FOR``); each inbound message and each status is
handled once by its key (``message:<wamid>``, ``status:<wamid>:<status>``), across a restart
too: the recent keys are loaded at start, checked in memory on the request (no I/O on the
trio thread), and written behind every ``FLUSH_EVERY`` seconds. Bounded: the newest
``MEMORY`` keys in memory, ``KEEP_FOR`` in the store.

A crash loses at most the keys of the last ``FLUSH_EVERY`` seconds: a redelivery of one of
those would be handled twice (Meta redelivers only what it did not see answered).
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable

import eliot
import trio

from wa_trio.core.errors import WaTrioError
from wa_trio.stores.seen import Seen

KEEP_FOR = 7 * 86400.0  # Meta retries a webhook for up to seven days
MEMORY = 200_000
FLUSH_EVERY = 1.0
PRUNE_EVERY = 3600.0


class WebhookSeen:
    def __init__(self, open_store: Callable[[], Seen], clock: Callable[[], float] = time.time):
        self._open = open_store
        self._clock = clock
        self._store: Seen | None = None
        self._keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._new: list[tuple[str, float]] = []
        self.duplicates = 0

    def first(self, key: str) -> bool:
        """Whether ``key`` is new (and remember it). Trio thread, no I/O."""
        if key in self._keys:
            self.duplicates += 1
            return False
        self._remember(key)
        self._new.append((key, self._clock()))
        return True

    def _remember(self, key: str) -> None:
        self._keys[key] = None
        while len(self._keys) > MEMORY:
            self._keys.popitem(last=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the recent keys, then write new ones behind (a task of the root nursery)."""
        store = self._store = await trio.to_thread.run_sync(self._open)
        try:
            since = self._clock() - KEEP_FOR
            for key in reversed(await trio.to_thread.run_sync(store.recent, since, MEMORY)):
                self._remember(key)
            task_status.started()
            pruned_at = self._clock()
            while True:
                await trio.sleep(FLUSH_EVERY)
                await self._flush(store)
                if self._clock() - pruned_at > PRUNE_EVERY:
                    pruned_at = self._clock()
                    await trio.to_thread.run_sync(store.prune, pruned_at - KEEP_FOR)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush(store)
                await trio.to_thread.run_sync(store.close)

    async def _flush(self, store: Seen) -> None:
        batch, self._new = self._new, []
        if not batch:
            return
        try:
            await trio.to_thread.run_sync(store.add, batch)
        except (WaTrioError, sqlite3.Error) as error:
            self._new[:0] = batch  # the store failing: next time (memory still has them)
            eliot.log_message(message_type="wa_trio:meta_webhook:seen_failed", error=str(error))


__all__ = ["FLUSH_EVERY", "KEEP_FOR", "MEMORY", "WebhookSeen"]
