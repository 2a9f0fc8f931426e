"""One account on the PostgreSQL store (WHATSAPP_STORE=postgresql, docs/scaling.md): migrate,
take the account's lease (a standby until it is free), run the worker while the lease holds;
a lost lease fences the worker and this replica stands by again; a store outage after it ran
is waited out. The lease itself: ``lease.py``; its timings: ``lease_rules.py``."""

from __future__ import annotations

import sys
from functools import partial

import attrs
import eliot
import trio

from wa_trio.accounts.balance import Balancer
from wa_trio.accounts.lease import Lease, take_lease
from wa_trio.core.errors import first_leaf
from wa_trio.core.lease_rules import RETRY_EVERY
from wa_trio.stores.files import StartupError
from wa_trio.stores.ledger import AsyncLedger, LedgerError
from wa_trio.stores.postgres import LeaseLost, PgLedger, StoreError, ensure_session_schema, migrate
from wa_trio.transport import Transport
from wa_trio.worker.app import Run, Worker, run_once
from wa_trio.worker.startup import build_transport


async def run_replica(
    run: Run,
    store: str,
    transport: Transport | None,
    task_status: trio.TaskStatus[Worker],
    balancer: Balancer | None = None,
) -> None:
    """One account on the PostgreSQL store: migrate, then take the account's lease (a standby
    until it is free), run the worker while the lease holds; a lost lease fences the worker
    (cancelled at once: the WhatsApp client stopped, unacked jobs back to the broker) and this
    replica stands by again. The timings: ``lease_rules``. With a ``balancer`` (an account of
    several), it queues for the lease only under the process's share, and an account the
    balancer moves is drained, released and stood by for again."""
    settings = run.settings
    account = settings.account_name
    try:
        await trio.to_thread.run_sync(migrate, store)
        if settings.transport == "neonize":
            await trio.to_thread.run_sync(ensure_session_schema, store, account)
    except StoreError as error:
        raise StartupError(error.message) from None
    first = True
    while not run.stop.is_set():
        try:
            lease = await _stand_by(run, store, balancer)
        except StoreError as error:
            if first:  # cannot start at all: one line
                raise StartupError(error.message) from None
            await _store_failing(run, error.message)  # it held the account before: retry
            continue
        if lease is None:
            return
        status = task_status if first else None
        if balancer is None:
            await _hold(run, store, transport, lease, status)
        else:
            await _hold_balanced(run, store, transport, lease, status, balancer)
        first = False


async def _hold_balanced(
    run: Run,
    store: str,
    transport: Transport | None,
    lease: Lease,
    task_status: trio.TaskStatus[Worker] | None,
    balancer: Balancer,
) -> None:
    """``_hold`` under its own stop: set by a stop of the account (which then stops the
    replica too) or by the balancer moving the account (which does not: it stands by again).
    Draining is the worker's graceful stop: the send in hand finishes and is recorded."""
    account = run.settings.account_name
    moved = balancer.holding(account)
    held = attrs.evolve(run, stop=trio.Event())
    try:
        async with trio.open_nursery() as watching:
            watching.start_soon(_set_on, run.stop, held.stop)
            watching.start_soon(_set_on, moved, held.stop)
            await _hold(held, store, transport, lease, task_status)
            watching.cancel_scope.cancel()
    finally:
        balancer.released(account)
    if held.stop.is_set() and not moved.is_set():
        run.stop.set()  # Worker.stop() on this hold's handle: a stop of the account


async def _set_on(event: trio.Event, then: trio.Event) -> None:
    await event.wait()
    then.set()


async def _stand_by(run: Run, store: str, balancer: Balancer | None = None) -> Lease | None:
    """The account's lease, once free; None when a stop came first (it ends a standby at
    once). Raises StoreError (bare, not in a nursery's group)."""
    lease: Lease | None = None
    failed: StoreError | None = None
    async with trio.open_nursery() as waiting:
        waiting.start_soon(_cancel_on, run.stop, waiting.cancel_scope)
        try:
            lease = await take_lease(
                run.settings,
                store,
                run.metrics,
                serve_http=run.serve_http,
                heartbeats=balancer.heartbeats if balancer is not None else None,
                may_queue=balancer.may_queue if balancer is not None else lambda: True,
                is_free=partial(balancer.free, run.settings.account_name)
                if balancer is not None
                else lambda: True,
            )
        except StoreError as error:
            failed = error
        waiting.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return lease


async def _hold(
    run: Run,
    store: str,
    transport: Transport | None,
    lease: Lease,
    task_status: trio.TaskStatus[Worker] | None,
) -> None:
    """Run the worker while ``lease`` holds (``task_status``: the first run's, None after);
    a lost lease fences it. The lease is released whatever happens."""
    settings, metrics = run.settings, run.metrics
    account = settings.account_name
    clean = False
    try:
        try:
            ledger = await _leased_ledger(run, store, lease)
        except LedgerError as error:
            if task_status is not None:
                raise StartupError(error.message) from None
            await _store_failing(run, error.message)
            return
        leased = attrs.evolve(settings, lease_epoch=lease.epoch)  # neonize's writes: fenced
        used = transport if transport is not None else build_transport(leased)
        await run_once(run, used, ledger, lease.keep, task_status or trio.TASK_STATUS_IGNORED)
        clean = True
    except* LeaseLost as group:
        metrics.leases_lost.inc()
        metrics.lease_epoch.set(0)
        eliot.log_message(
            message_type="wa_trio:lease:fenced",
            level="error",
            account=account,
            epoch=lease.epoch,
            error=str(first_leaf(group)),
        )
        print(
            f"wa-trio: lost the lease of account {account}; stopped its client and its "
            "consumer, standing by again",
            file=sys.stderr,
            flush=True,
        )
    finally:
        await lease.release(clean=clean)


async def _leased_ledger(run: Run, store: str, lease: Lease) -> AsyncLedger:
    """The account's ledger under ``lease``'s epoch; the rows a dead holder left ``sending``
    counted (ambiguous: WHATSAPP_AMBIGUOUS decides them). Raises LedgerError."""
    settings = run.settings
    account = settings.account_name
    with trio.CancelScope(shield=True):  # made: ours to close (connect_timeout)
        pg_ledger = await trio.to_thread.run_sync(PgLedger, store, account, lease.epoch)
    try:
        inherited = await trio.to_thread.run_sync(pg_ledger.inherited_sending)
    except BaseException:
        pg_ledger.close()
        raise
    run.metrics.inherited_sending.set(inherited)
    if inherited:
        eliot.log_message(
            message_type="wa_trio:lease:inherited_sending",
            account=account,
            rows=inherited,
            ambiguous=settings.ambiguous,
        )
    return AsyncLedger(pg_ledger)


async def _store_failing(run: Run, error: str) -> None:
    """The store failed after this replica had run the account: wait, then stand by again
    (a replica outlives a PostgreSQL restart; only a start without the store is fatal)."""
    eliot.log_message(
        message_type="wa_trio:lease:store_failing",
        level="error",
        account=run.settings.account_name,
        error=error,
    )
    with trio.move_on_after(RETRY_EVERY):
        await run.stop.wait()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


__all__ = ["run_replica"]
