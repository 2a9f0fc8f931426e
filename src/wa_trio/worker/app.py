"""The root nursery: every long-running task of the worker, started in dependency order.

    transport.run   -> the WhatsApp side (dry-run: nothing; neonize: connect + watchdog)
    status.run      -> status events out (own connection, confirms)
    webhook.run     -> status events POSTed, signed, from a durable outbox (when configured)
    meta.run        -> Cloud API: Meta's webhook items seen, written behind (redeliveries)
    run_http        -> /healthz /readyz /metrics /login
    pipeline.run    -> consume -> validate -> send -> ack (reconnects on broker loss); the
                       broker monitor starts once its topology is declared
    monitor.run     -> broker probe + queue sampler (own connection)
    prune_ledger    -> forget ledger rows older than WHATSAPP_DEDUP_WINDOW (hourly)
    signals         -> SIGTERM/SIGINT/SIGHUP start a graceful stop

Stopping (signal or ``Worker.stop()``): the pipeline drains (no new jobs; the send in hand
finishes), the HTTP server stops, then everything else is cancelled. A hard deadline of
WHATSAPP_SHUTDOWN_GRACE bounds the whole stop: a send still running then is abandoned unacked
(the broker redelivers it).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import attrs
import eliot
import trio

from wa_trio.account_safety import AccountSafety
from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import parse_envelope
from wa_trio.core.errors import TopologyError, TransportError
from wa_trio.core.errors import first_leaf as _first
from wa_trio.core.templates import TemplateSet
from wa_trio.events.inbound import InboundPublisher
from wa_trio.events.status import StatusPublisher
from wa_trio.events.status_webhook import WebhookSink
from wa_trio.log import Redactor
from wa_trio.media.cache import MediaCache
from wa_trio.media.fetch import MediaFetcher
from wa_trio.metrics import Metrics
from wa_trio.pipeline.consumer import Pipeline
from wa_trio.stores.files import StartupError, write_http_address
from wa_trio.stores.ledger import AsyncLedger, LedgerError
from wa_trio.transport import Transport
from wa_trio.transport.cloud_api.webhook import MetaWebhook
from wa_trio.web.api import HttpApi, build_api
from wa_trio.web.app import create_app, reachable, run_http
from wa_trio.worker.console_source import console_for
from wa_trio.worker.startup import (
    admin_token,
    meta_webhook,
    watch_signals,
    wire_gauges,
)

if TYPE_CHECKING:  # the web side is web.py's (the one quart importer)
    from quart_trio import QuartTrio

#: what holds the account while its worker runs (a replica's ``Lease.keep``), started first in
#: the root nursery: ``fence(heartbeat, on_lost=...)``; when it is lost it calls ``on_lost``
#: and raises, which cancels every task below it
Fence = Callable[..., Awaitable[None]]


@attrs.define
class Worker:
    """Handle on a running worker (what ``run_worker`` hands to ``task_status.started``)."""

    settings: Settings
    transport: Transport
    metrics: Metrics
    pipeline: Pipeline
    monitor: BrokerMonitor
    status: StatusPublisher
    ledger: AsyncLedger
    webhook: WebhookSink
    safety: AccountSafety
    inbound: InboundPublisher
    media: MediaFetcher
    meta: MetaWebhook | None  # the Cloud API's webhook (a multi-account server routes to it)
    http_urls: list[str]
    _stop: trio.Event = attrs.field(alias="stop_event")

    def stop(self) -> None:
        self._stop.set()

    @property
    def http_url(self) -> str:
        return reachable(self.http_urls[0])


@attrs.frozen
class Run:
    """What every (re)start of the worker shares: one stop event (a ``Worker.stop()`` on any
    handle stops the worker, or its standby), one metrics registry."""

    settings: Settings
    metrics: Metrics
    templates: TemplateSet
    stop: trio.Event
    handle_signals: bool
    serve_http: bool
    on_running: Callable[[Worker | None], None] | None


async def run_once(
    run: Run,
    transport: Transport,
    ledger: AsyncLedger,
    fence: Fence | None,
    task_status: trio.TaskStatus[Worker],
) -> None:
    """Build the parts around ``ledger`` and run them until stopped (or fenced: ``fence``)."""
    settings, metrics = run.settings, run.metrics
    try:
        webhook = WebhookSink(settings, metrics)
        await trio.to_thread.run_sync(webhook.open)
    except BaseException:
        with trio.CancelScope(shield=True):
            await ledger.close()
        raise
    status = StatusPublisher(settings, metrics, ledger, webhook)
    transport.on_receipt = status.on_receipt
    redactor = Redactor(settings.production)
    safety = await AccountSafety.open(settings, metrics, redactor)
    inbound = InboundPublisher(settings, metrics, redactor, safety)
    transport.on_inbound = inbound.on_inbound
    if hasattr(transport, "on_callback_error"):  # neonize: callbacks from Go threads
        transport.on_callback_error = lambda kind: metrics.callback_errors.labels(kind).inc()
    media_cache = await trio.to_thread.run_sync(
        MediaCache, settings.session_path / "media", settings.media_cache_bytes
    )
    fetcher = MediaFetcher(settings, metrics, media_cache)
    pipeline = Pipeline(
        settings,
        transport,
        metrics,
        ledger,
        status,
        templates=run.templates,
        safety=safety,
        media=fetcher,
    )
    monitor = BrokerMonitor(settings, metrics)
    wire_gauges(settings, metrics, pipeline, monitor)
    api = (
        await trio.to_thread.run_sync(
            build_api,
            settings,
            metrics,
            partial(
                parse_envelope,
                content_filter=settings.content_filter,
                templates=run.templates,
                cloud_templates=transport.cloud_templates,
                media_inline_max=settings.media_inline_max_bytes,
            ),
        )
        if run.serve_http
        else None
    )
    if api is not None:
        status.observers.append(api.observe)
    meta = meta_webhook(settings, metrics, status.on_receipt, inbound.on_inbound)
    app = create_app(
        consumer=pipeline,
        monitor=monitor,
        transport=transport,
        metrics=metrics,
        # an account of several: the process's server has the token (printed once, there)
        admin_token=admin_token(settings) if run.serve_http else secrets.token_urlsafe(24),
        redactor=redactor,
        session_path=settings.session_path,
        meta_webhook=meta,
        api=api,
        console=console_for(settings, transport, metrics, pipeline, monitor, run.serve_http),
        account=settings.account_name,
    )
    eliot.log_message(
        message_type="wa_trio:start",
        transport=transport.name,
        broker=settings.redacted_url,
        queue=settings.queue_name,
        prefetch=settings.prefetch_count,
    )
    parts = _Parts(
        settings,
        transport,
        pipeline,
        monitor,
        metrics,
        status,
        ledger,
        app,
        webhook,
        safety,
        inbound,
        fetcher,
        meta,
        api,
    )
    try:
        await _supervise(parts, run, fence, task_status=task_status)
    except* (TopologyError, StartupError, TransportError) as group:
        # start-up cannot go on: give the CLI the one error to print, not a group
        raise _first(group) from None
    finally:
        if run.on_running is not None:
            run.on_running(None)
        with trio.CancelScope(shield=True):
            await ledger.close()
        webhook.close()
        safety.close()
        media_cache.close()
        if api is not None:
            api.store.close()
    eliot.log_message(message_type="wa_trio:stopped")


@attrs.frozen
class _Parts:
    """What ``run_worker`` built, for ``_supervise`` to run."""

    settings: Settings
    transport: Transport
    pipeline: Pipeline
    monitor: BrokerMonitor
    metrics: Metrics
    status: StatusPublisher
    ledger: AsyncLedger
    app: QuartTrio
    webhook: WebhookSink
    safety: AccountSafety
    inbound: InboundPublisher
    media: MediaFetcher
    meta: MetaWebhook | None
    api: HttpApi | None = None


async def _supervise(
    parts: _Parts,
    run: Run,
    fence: Fence | None,
    *,
    task_status: trio.TaskStatus[Worker],
) -> None:
    settings, pipeline = parts.settings, parts.pipeline
    stop, handle_signals, serve_http = run.stop, run.handle_signals, run.serve_http
    http_shutdown = trio.Event()
    http_done = trio.Event()
    pipeline_done = trio.Event()

    async def http_task(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await run_http(
                parts.app,
                settings.http_host,
                settings.http_port,
                http_shutdown,
                task_status=task_status,
            )
        except* OSError as group:  # binding: the port is taken, the address is not ours
            error = _first(group)
            reason = error.strerror if isinstance(error, OSError) else None
            raise StartupError(
                f"cannot listen on {settings.http_host}:{settings.http_port} (HTTP_HOST, "
                f"HTTP_PORT): {reason or error}"
            ) from None
        finally:
            http_done.set()

    async def pipeline_then_done(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await pipeline.run(task_status=task_status)
        finally:
            pipeline_done.set()

    async with trio.open_nursery() as nursery:
        if fence is not None:  # first: a lost lease cancels everything below (the fence)
            await nursery.start(
                partial(
                    fence,
                    partial(_heartbeat, parts.transport, settings),
                    on_lost=partial(_fence, pipeline),
                )
            )
        await nursery.start(parts.transport.run)
        await nursery.start(parts.status.run)
        await nursery.start(parts.webhook.run)
        await nursery.start(parts.inbound.run)
        await nursery.start(parts.safety.run, parts.transport)
        await nursery.start(parts.media.run)
        if parts.meta is not None:
            await nursery.start(parts.meta.run)
        if parts.api is not None:
            await nursery.start(parts.api.run)
        urls: list[str] = []
        if serve_http:
            urls = await nursery.start(http_task)
            eliot.log_message(message_type="wa_trio:http:listening", urls=urls)
            write_http_address(settings.session_path, reachable(urls[0]))
        else:
            http_done.set()
        if handle_signals:  # a person started it: say where to look
            print(f"wa-trio: HTTP listening on {', '.join(urls)}", file=sys.stderr, flush=True)
        nursery.start_soon(_broker_side, pipeline_then_done, parts.monitor)
        nursery.start_soon(_prune_ledger, parts.ledger, settings.dedup_window)
        if handle_signals:
            nursery.start_soon(watch_signals, stop)
        worker = Worker(
            settings,
            parts.transport,
            parts.metrics,
            pipeline,
            parts.monitor,
            parts.status,
            parts.ledger,
            parts.webhook,
            parts.safety,
            parts.inbound,
            parts.media,
            parts.meta,
            urls,
            stop_event=stop,
        )
        task_status.started(worker)
        if run.on_running is not None:
            run.on_running(worker)

        await stop.wait()
        eliot.log_message(message_type="wa_trio:stopping", grace=settings.shutdown_grace)
        nursery.cancel_scope.deadline = trio.current_time() + settings.shutdown_grace
        pipeline.set_hard_deadline(nursery.cancel_scope.deadline)
        pipeline.stop()
        await pipeline_done.wait()
        await _flush_status(parts.status)
        http_shutdown.set()
        with trio.move_on_after(3):  # let hypercorn close its listeners and connections
            await http_done.wait()
        nursery.cancel_scope.cancel()


def _fence(pipeline: Pipeline) -> None:
    """The lease is lost: the pipeline stops now (its shielded sends and records are cut at
    once: a record the store cannot take stays ``sending``, the taker's ambiguous window);
    ``LeaseLost`` then cancels every task of the worker."""
    pipeline.set_hard_deadline(trio.current_time())
    pipeline.stop()


def _heartbeat(transport: Transport, settings: Settings) -> tuple[str | None, str | None]:
    """What the lease's heartbeat records (``wa-trio accounts``): the state, the linked
    number (masked in production)."""
    linked = transport.login_status().linked_as
    return transport.state.value, Redactor(settings.production).phone(linked) if linked else None


async def _broker_side(
    run_pipeline: Callable[..., Awaitable[None]], monitor: BrokerMonitor
) -> None:
    """The pipeline, then (once its topology exists) the broker monitor beside it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(run_pipeline)
        nursery.start_soon(monitor.run)
        # the pipeline returns after a stop; the monitor then goes with the root's cancel


async def _flush_status(status: StatusPublisher, limit: float = 5.0) -> None:
    """Publish the events of the last jobs before the connection goes (bounded; the grace
    deadline bounds it too). What is still buffered then is lost, and said so."""
    with trio.move_on_after(limit):
        await status.drain()
    if status.pending:
        eliot.log_message(message_type="wa_trio:status:unpublished", events=status.pending)


async def _prune_ledger(ledger: AsyncLedger, window: float, every: float = 3600.0) -> None:
    """Forget ledger entries older than WHATSAPP_DEDUP_WINDOW, at start and then hourly."""
    while True:
        try:
            removed = await ledger.prune(window)
        except LedgerError as error:
            eliot.log_message(message_type="wa_trio:ledger:prune_failed", error=error.message)
        else:
            if removed:
                eliot.log_message(message_type="wa_trio:ledger:pruned", removed=removed)
        await trio.sleep(every)
