"""Several WhatsApp accounts in one process (WHATSAPP_ACCOUNTS=a,b,c).

Each account is a whole worker (``run.run_worker``, passed in, with ``Settings.for_account``):
its own transport, session folder (and session lock: an account held by another process waits
here as its standby with WHATSAPP_STANDBY=on while the others run), ledger, pacing, number
cache, safety, queue ``<WHATSAPP_QUEUE_NAME>.<account>``, status events and metrics registry.
Beside them: the pool router (``pool.py``) on the main queue, and the process's one HTTP server
(``web.create_accounts_app``: health and readiness per account, /metrics with an ``account``
label, /login?account=NAME). The accounts share the process's AMQP connections (channels on
a pair of connections per 50 accounts, ``bus.shared``). A stop (signal or ``stop()``) drains
every account.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import eliot
import trio

from wa_trio.accounts.balance import Balancer
from wa_trio.accounts.pool import PoolRouter
from wa_trio.bus.address import BrokerAddress
from wa_trio.bus.shared import ACCOUNTS_PER_CONNECTION, SHARED, SharedConnections, share
from wa_trio.config.settings import Settings
from wa_trio.core import balance
from wa_trio.core.envelope import WhatsAppEnvelope, parse_envelope
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.files import StartupError, write_http_address
from wa_trio.transport import Transport
from wa_trio.web.accounts_app import create_accounts_app
from wa_trio.web.api import build_api
from wa_trio.web.app import reachable, run_http
from wa_trio.worker.app import Worker
from wa_trio.worker.console_source import WorkerConsole
from wa_trio.worker.startup import admin_token, ensure_fd_room, load_templates, watch_signals


@attrs.define
class Accounts:
    """Handle on a running multi-account worker (what ``run_accounts`` starts with)."""

    settings: Settings
    workers: dict[str, Worker]  # the accounts running (one waiting as a standby is not yet)
    router: PoolRouter
    metrics: Metrics  # the process's own (the pool's counters)
    http_urls: list[str]
    _stop: trio.Event = attrs.field(alias="stop_event")
    connections: SharedConnections | None = None  # the AMQP connections its accounts share

    def stop(self) -> None:
        self._stop.set()

    @property
    def http_url(self) -> str:
        return reachable(self.http_urls[0])


#: runs one account's worker (``run.run_worker``: passed in, so this layer imports no layer
#: above it)
RunAccount = Callable[..., Awaitable[None]]


async def run_accounts(
    settings: Settings,
    run_worker: RunAccount,
    *,
    transports: dict[str, Transport] | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Accounts] = trio.TASK_STATUS_IGNORED,
) -> None:
    ensure_fd_room(len(settings.accounts))
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    workers: dict[str, Worker] = {}
    live: dict[str, Transport] = {}  # filled as accounts start: the router routes to these
    scopes: dict[str, trio.CancelScope] = {}
    stop = trio.Event()
    http_shutdown = trio.Event()

    def running(name: str, worker: Worker | None) -> None:
        """An account's worker (re)started, or stopped sending (a stop, a lost lease)."""
        if worker is None:  # reported as a standby until it runs again
            live.pop(name, None)
            workers.pop(name, None)
            return
        workers[name] = worker
        live[name] = worker.transport
        if api is not None and api.observe not in worker.status.observers:
            worker.status.observers.append(api.observe)  # the API follows its jobs

    async def one(name: str) -> None:
        """One account's worker, for as long as it runs (started without waiting: an account
        waiting as a standby must not hold the others back), on its group's connections."""
        share(hub, settings.accounts.index(name) // ACCOUNTS_PER_CONNECTION)
        with trio.CancelScope() as scopes[name]:
            await run_worker(
                settings.for_account(name),
                transport=(transports or {}).get(name),
                handle_signals=False,
                serve_http=False,
                on_running=partial(running, name),
                balancer=balancer,
            )

    token = admin_token(settings)
    api = await trio.to_thread.run_sync(build_api, settings, metrics, _validator(settings))
    hub = SharedConnections(BrokerAddress.from_settings(settings), len(settings.accounts))
    async with trio.open_nursery() as root:
        await root.start(hub.run)  # before the accounts, cancelled after them
        balancer = _balancer(settings, metrics, workers)
        if balancer is not None:  # its first beat says how many replicas share the accounts
            await root.start(balancer.run)
        marked = share(hub, 0)  # the router and the API, from here on
        if api is not None:
            await root.start(api.run)
        async with trio.open_nursery() as accounts_nursery:
            for name in settings.accounts:
                accounts_nursery.start_soon(one, name)
            router = PoolRouter(settings, live, metrics, partial(_window_open, workers))
            await root.start(router.run)
            app = create_accounts_app(
                workers=workers,
                accounts=settings.accounts,
                metrics=metrics,
                admin_token=token,
                redactor=Redactor(settings.production),
                api=api,
                console=WorkerConsole(settings, lambda: workers),
                cloud_account=settings.cloud_account,
            )
            try:
                urls: list[str] = await root.start(
                    run_http, app, settings.http_host, settings.http_port, http_shutdown
                )
            except* OSError as group:
                raise StartupError(
                    f"cannot listen on {settings.http_host}:{settings.http_port} (HTTP_HOST, "
                    f"HTTP_PORT): {group.exceptions[0]}"
                ) from None
            write_http_address(settings.session_path, reachable(urls[0]))
            if handle_signals:
                print(f"wa-trio: HTTP listening on {', '.join(urls)}", file=sys.stderr, flush=True)
                root.start_soon(watch_signals, stop)
            eliot.log_message(
                message_type="wa_trio:accounts:start", accounts=list(settings.accounts)
            )
            task_status.started(Accounts(settings, workers, router, metrics, urls, stop, hub))
            await stop.wait()
            _stop_all(settings.accounts, workers, scopes)
        http_shutdown.set()
        SHARED.reset(marked)  # run_worker's caller awaited this in its own task
        root.cancel_scope.cancel()


def _stop_all(
    accounts: tuple[str, ...], workers: dict[str, Worker], scopes: dict[str, trio.CancelScope]
) -> None:
    for name in accounts:
        if name in workers:
            workers[name].stop()  # drains: the send in hand finishes
        elif name in scopes:
            scopes[name].cancel()  # still a standby: nothing in flight


def _balancer(settings: Settings, metrics: Metrics, workers: dict[str, Worker]) -> Balancer | None:
    """On the PostgreSQL store, the accounts are spread over the replicas that run them."""
    store = stores.postgres(settings)
    if store is None:
        return None
    return Balancer(
        store,
        balance.configuration(settings.queue_name, settings.accounts),
        len(settings.accounts),
        metrics,
        busy=lambda: [name for name, worker in workers.items() if worker.pipeline.sending],
    )


def _window_open(workers: dict[str, Worker], account: str, destination: str) -> bool:
    """Whether ``destination`` wrote to ``account`` in the last 24 hours (the pool sends free
    text to the Cloud API account only then)."""
    worker = workers.get(account)
    return worker is not None and worker.safety.window_open(destination)


def _validator(settings: Settings) -> Callable[[bytes], WhatsAppEnvelope]:
    """The API's validation of a job for the pool: the worker's rules, the process's templates;
    a Cloud API template is accepted unless every account sends through neonize."""
    return partial(
        parse_envelope,
        content_filter=settings.content_filter,
        templates=load_templates(settings),
        cloud_templates=settings.transports != {"neonize"},
        media_inline_max=settings.media_inline_max_bytes,
    )


__all__ = ["Accounts", "run_accounts"]
