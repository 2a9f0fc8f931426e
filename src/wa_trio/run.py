"""The mode switch: how ``wa-trio run`` runs, by the settings (issue 28).

- several accounts (WHATSAPP_ACCOUNTS, no WHATSAPP_ACCOUNT): ``accounts.multi.run_accounts``,
  which runs each account through ``run_worker`` again, with that account's settings;
- WHATSAPP_STORE=postgresql: the account's lease first (``accounts.replica.run_replica``);
- else one account on local files: its session folder's lock (or a standby until it is free),
  its SQLite ledger, then ``worker.app.run_once``.

Above every layer it composes: nothing imports this module but the CLI (and tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import trio

from wa_trio.config.settings import Settings
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.files import StartupError, lock_session, private_dir, try_lock_session
from wa_trio.stores.ledger import AsyncLedger, LedgerError
from wa_trio.transport import Transport
from wa_trio.worker.app import Run, Worker, run_once
from wa_trio.worker.startup import build_transport, check_media_tools, load_templates

if TYPE_CHECKING:
    from wa_trio.accounts.balance import Balancer


async def run_worker(
    settings: Settings,
    *,
    transport: Transport | None = None,
    handle_signals: bool = True,
    serve_http: bool = True,
    on_running: Callable[[Worker | None], None] | None = None,
    balancer: Balancer | None = None,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the worker until stopped; returns normally after a graceful stop. With several
    accounts (WHATSAPP_ACCOUNTS), one worker per account and the pool router (``accounts.py``).
    With WHATSAPP_STORE=postgresql, the account's lease comes first (``_run_replica``).
    ``on_running`` hears of each (re)start of the worker, and None when it stops sending;
    ``balancer``: an account of several on PostgreSQL, spread over the replicas."""
    if settings.multi_account and not settings.account:
        from wa_trio.accounts.multi import run_accounts

        await run_accounts(
            settings,
            run_worker,
            handle_signals=handle_signals,
            task_status=cast("trio.TaskStatus[Any]", task_status),  # an Accounts handle
        )
        return
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    templates = load_templates(settings)
    settings = check_media_tools(settings)
    await trio.to_thread.run_sync(private_dir, settings.session_path)
    run = Run(settings, metrics, templates, trio.Event(), handle_signals, serve_http, on_running)
    if settings.store is not None:
        from wa_trio.accounts.replica import run_replica

        await run_replica(run, settings.store, transport, task_status, balancer)
        return
    session_lock = await trio.to_thread.run_sync(try_lock_session, settings.session_path)
    if session_lock is None:
        if not settings.standby:
            session_lock = await trio.to_thread.run_sync(lock_session, settings.session_path)
        else:
            from wa_trio.accounts.standby import stand_by

            session_lock = await stand_by(settings, metrics, serve_http=serve_http)
    try:
        try:
            ledger = AsyncLedger(await trio.to_thread.run_sync(stores.local_ledger, settings))
        except LedgerError as error:
            raise StartupError(error.message) from None
        await run_once(run, transport or build_transport(settings), ledger, None, task_status)
    finally:
        session_lock.close()


__all__ = ["run_worker"]
