"""Several accounts across replicas on PostgreSQL (issue 16): what the operator sees
(`wa-trio accounts`), the one opt-out list every replica obeys, the shared number cache, and
the CLI refusing to touch an account a worker holds. Each test has its own database."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from tests.conftest import closed_port
from tests.helpers import (
    delete_topology,
    drain_queue,
    error_code,
    job_body,
    publish_many,
    sent_records,
    stop_worker,
    wait_for,
)
from wa_trio.accounts.multi import Accounts
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.stores.numbers import Resolution
from wa_trio.stores.postgres import LeaseConnection, PgContactStore, PgNumberCache, migrate
from wa_trio.worker.app import Worker


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "wa_trio", *args],
        env={**os.environ, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _by_account(out: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {row["account"]: row for row in rows}


async def test_wa_trio_accounts_shows_who_holds_each_account_and_its_state(
    pg_store: str, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    env = make_env(WHATSAPP_STORE=pg_store, WHATSAPP_ACCOUNTS="a,b")
    settings = Settings.from_env(env)
    handle: Accounts = await nursery.start(partial(run_worker, settings, handle_signals=False))
    try:
        await wait_for(lambda: set(handle.workers) == {"a", "b"}, what="both accounts running")

        async def heartbeats() -> bool:
            _, out, _ = await _cli(env, "accounts", "--json")
            rows = _by_account(out)
            return all(rows.get(a, {}).get("state") == "connected" for a in ("a", "b"))

        await wait_for(heartbeats, timeout=20, what="the heartbeats in the store")
        code, out, _ = await _cli({**env, "WHATSAPP_ACCOUNTS": "a,b,c"}, "accounts", "--json")
        rows = _by_account(out)
        assert code == 0
        assert rows["a"]["holder"].endswith(f":{os.getpid()}")  # this process holds it
        assert float(rows["a"]["heartbeat_age_s"]) < 5
        assert rows["c"]["state"] == "never started"
        code, table, _ = await _cli(env, "accounts")
        assert table.splitlines()[0].split() == ["ACCOUNT", "STATE", "LINKED", "HOLDER"]
        assert len(table.splitlines()) == 3
    finally:
        handle.stop()
        await wait_for(lambda: not handle.workers, timeout=30, what="stopped")
        try:

            async def released() -> bool:  # the server drops a lock a moment after
                _, out, _ = await _cli(env, "accounts", "--json")
                return {row["state"] for row in _by_account(out).values()} == {"not held"}

            await wait_for(released, what="both leases released")
        finally:
            for name in (None, "a", "b"):
                await delete_topology(settings if name is None else settings.for_account(name))


async def test_wa_trio_accounts_with_files_reads_the_local_worker(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    port = closed_port()
    env = make_env(HTTP_PORT=str(port))
    settings = Settings.from_env(env)
    worker: Worker = await nursery.start(partial(run_worker, settings, handle_signals=False))
    try:
        code, out, _ = await _cli(env, "accounts", "--json")
        row = _by_account(out)["default"]
        assert code == 0
        assert row["state"] == "connected"
        assert row["holder"] == "a worker on this host"
    finally:
        try:
            await stop_worker(worker)
        finally:
            await delete_topology(settings)


def test_every_replica_obeys_one_opt_out_list(pg_store: str) -> None:
    migrate(pg_store)
    here, there = PgContactStore(pg_store, "a"), PgContactStore(pg_store, "b")
    try:
        seen = there.data_version()
        assert here.add_optout("+5511999990001", "inbound:a")
        assert here.data_version() == here.data_version()  # its own write: no reload needed
        assert there.data_version() != seen  # another replica's write: reload
        assert "+5511999990001" in there.snapshot().optouts
        assert not there.add_optout("+5511999990001", "cli:ops")  # once
        assert here.claim_reply("+5511999990001") and not there.claim_reply("+5511999990001")
        here.record({"+5511999990002": 2}, {}, time.time())
        there.record({"+5511999990002": 1}, {}, time.time())
        assert here.snapshot().unanswered == {"+5511999990002": 2}  # counts are per account
        here.record({}, {"+5511999990002": time.time()}, time.time())
        assert here.snapshot().unanswered == {"+5511999990002": 0}
        assert there.remove_optout("+5511999990001")
        assert here.optouts() == []
    finally:
        here.close()
        there.close()


def test_the_number_cache_is_the_accounts_on_every_replica_and_expires(pg_store: str) -> None:
    migrate(pg_store)
    # two replicas running account a (one after the other), and account b
    one, two = PgNumberCache(pg_store, "a", ttl=60), PgNumberCache(pg_store, "a", ttl=60)
    other = PgNumberCache(pg_store, "b", ttl=60)
    try:
        now = time.time()
        one.put(Resolution("+5511999990003", True, "5511999990003", now))
        assert two.get("+5511999990003", now + 1) == Resolution(
            "+5511999990003", True, "5511999990003", now
        )
        assert two.get("+5511999990003", now + 61) is None
        assert other.get("+5511999990003", now + 1) is None  # each account its own cache
        one.put(Resolution("+5511999990003", False, "", now + 2))
        assert two.get("+5511999990003", now + 3).on_whatsapp is False  # type: ignore[union-attr]
    finally:
        for cache in (one, two, other):
            cache.close()


async def test_an_opt_out_added_from_the_cli_stops_a_replicas_sends(
    pg_store: str, make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    env = make_env(WHATSAPP_STORE=pg_store)
    settings = Settings.from_env(env)
    worker: Worker = await nursery.start(partial(run_worker, settings, handle_signals=False))
    try:
        code, _, err = await _cli(env, "optout", "add", "+5511999990004")
        assert code == 0, err
        await trio.sleep(1.5)  # the worker reloads the list within a second
        body = job_body(1, destination="+5511999990004")
        await publish_many(settings, [body], message_ids=["optout-1"])
        letters = await drain_queue_until(settings, 1)
        assert [error_code(letter) for letter in letters] == ["opted_out"]
        assert sent_records(settings.dry_run_file) == []
    finally:
        try:
            await stop_worker(worker)
        finally:
            await delete_topology(settings)


async def drain_queue_until(settings: Settings, count: int) -> list[Any]:
    letters: list[Any] = []

    async def arrived() -> bool:
        letters.extend(await drain_queue(settings, settings.dlq_name))
        return len(letters) >= count

    await wait_for(arrived, timeout=20, what="the dead letter")
    return letters


async def test_login_and_import_are_refused_while_a_replica_holds_the_account(
    pg_store: str, make_env: Callable[..., dict[str, str]], tmp_path: Any
) -> None:
    env = make_env(
        WHATSAPP_STORE=pg_store, WHATSAPP_ACCOUNTS="sales,support", WHATSAPP_TRANSPORT="neonize"
    )  # login links a neonize device (dry-run links none: refused first, issue 30)
    await trio.to_thread.run_sync(migrate, pg_store)
    holder = LeaseConnection(pg_store, "sales")
    assert holder.try_take() is not None
    try:
        code, _, err = await _cli(env, "login", "--account", "sales", "--timeout", "5")
        assert code == 2
        assert err.strip().splitlines() == [
            "wa-trio: a running worker holds account sales; link it there "
            "(/login?account=sales) or stop it first"
        ]
        code, _, err = await _cli(env, "login", "--account", "nobody")
        assert code == 2 and "no account 'nobody' in WHATSAPP_ACCOUNTS" in err
    finally:
        holder.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_pool_of_accounts_on_either_store_sends_each_job_once(
    store: str,
    make_env: Callable[..., dict[str, str]],
    nursery: trio.Nursery,
    request: pytest.FixtureRequest,
) -> None:
    extra = {"WHATSAPP_STORE": request.getfixturevalue("pg_store")} if store != "sqlite" else {}
    env = make_env(WHATSAPP_ACCOUNTS="a,b,c", **extra)
    settings = Settings.from_env(env)
    handle: Accounts = await nursery.start(partial(run_worker, settings, handle_signals=False))
    try:
        await wait_for(lambda: len(handle.workers) == 3, what="three accounts")
        bodies = [job_body(i, destination=f"+5511999{i % 30:06d}") for i in range(300)]
        ids = [f"pool-{i}" for i in range(300)]
        await publish_many(settings, bodies, message_ids=ids)
        await wait_for(
            lambda: len(sent_records(settings.dry_run_file)) >= 300, timeout=60, what="sent"
        )
        records = sent_records(settings.dry_run_file)
        assert sorted(r["job_key"] for r in records) == sorted(ids)
        owners: dict[str, set[str]] = {}
        for record in records:
            owners.setdefault(record["destination"], set()).add(record["account"])
        assert all(len(accounts) == 1 for accounts in owners.values())
        assert {r["account"] for r in records} == {"a", "b", "c"}
    finally:
        handle.stop()
        try:
            await wait_for(lambda: not handle.workers, timeout=30, what="stopped")
        finally:
            for name in (None, "a", "b", "c"):
                await delete_topology(settings if name is None else settings.for_account(name))
