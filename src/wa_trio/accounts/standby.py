"""A standby for a session held by another worker (docs/scaling.md): the SQLite session lock
(WHATSAPP_STANDBY=on, same host) or the account's PostgreSQL lease (WHATSAPP_STORE, any host)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import IO, TypeVar

import eliot
import trio

from wa_trio.config.settings import Settings
from wa_trio.core.errors import first_leaf
from wa_trio.metrics import Metrics
from wa_trio.stores.files import StartupError, wait_lock_session
from wa_trio.web.accounts_app import create_standby_app
from wa_trio.web.app import run_http

T = TypeVar("T")


async def stand_by(settings: Settings, metrics: Metrics, *, serve_http: bool = True) -> IO[bytes]:
    """Wait for the session lock another worker holds (WHATSAPP_STANDBY=on); return it once
    taken. The lock is the kernel's: it is free the moment its holder's process ends, kill -9
    included, and the kernel wakes the waiting thread then: the takeover is start-up time."""

    async def lock() -> IO[bytes]:
        return await trio.to_thread.run_sync(
            wait_lock_session, settings.session_path, abandon_on_cancel=True
        )

    reason = f"standby: another worker holds the session {settings.session_path}"
    return await wait_as_standby(settings, metrics, lock, reason, serve_http=serve_http)


async def wait_as_standby(
    settings: Settings,
    metrics: Metrics,
    acquire: Callable[[], Awaitable[T]],
    reason: str,
    *,
    serve_http: bool = True,
) -> T:
    """Run ``acquire`` until it returns, serving /livez, /healthz (200: alive) and /readyz
    (503: not ready) meanwhile (unless the process's one server reports it: several accounts)."""
    metrics.standby.set(1)
    shutdown = trio.Event()
    print(f"wa-trio: {reason}; waiting to take over", file=sys.stderr, flush=True)
    eliot.log_message(message_type="wa_trio:standby:waiting", account=settings.account_name)
    async with trio.open_nursery() as nursery:
        try:
            if serve_http:
                await nursery.start(
                    run_http,
                    create_standby_app(metrics, reason),
                    settings.http_host,
                    settings.http_port,
                    shutdown,
                )
        except* OSError as group:
            error = first_leaf(group)
            raise StartupError(
                f"cannot listen on {settings.http_host}:{settings.http_port} (HTTP_HOST, "
                f"HTTP_PORT): {getattr(error, 'strerror', None) or error}"
            ) from None
        taken = await acquire()
        shutdown.set()  # the standby's server goes; the worker's takes the port
    metrics.standby.set(0)
    eliot.log_message(message_type="wa_trio:standby:took_over")
    print("wa-trio: took over the session", file=sys.stderr, flush=True)
    return taken


__all__ = ["stand_by", "wait_as_standby"]
