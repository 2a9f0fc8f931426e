"""A standby for a session held by another worker (WHATSAPP_STANDBY=on, docs/scaling.md)."""

from __future__ import annotations

import sys
from typing import IO

import eliot
import trio

from wa_trio.config import Settings
from wa_trio.errors import first_leaf
from wa_trio.files import StartupError, wait_lock_session
from wa_trio.metrics import Metrics
from wa_trio.web import create_standby_app, run_http


async def stand_by(settings: Settings, metrics: Metrics, *, serve_http: bool = True) -> IO[bytes]:
    """Wait for the session lock another worker holds (WHATSAPP_STANDBY=on), serving /livez,
    /healthz (200: alive) and /readyz (503: not ready) meanwhile; return the lock once taken.
    The lock is the kernel's: it is free the moment its holder's process ends, kill -9
    included, and the kernel wakes the waiting thread then: the takeover is start-up time."""
    reason = f"standby: another worker holds the session {settings.session_path}"
    metrics.standby.set(1)
    shutdown = trio.Event()
    print(f"wa-trio: {reason}; waiting to take over", file=sys.stderr, flush=True)
    eliot.log_message(message_type="wa_trio:standby:waiting", session=str(settings.session_path))
    async with trio.open_nursery() as nursery:
        try:
            if serve_http:  # several accounts: the process's one server reports it instead
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
        lock = await trio.to_thread.run_sync(
            wait_lock_session, settings.session_path, abandon_on_cancel=True
        )
        shutdown.set()  # the standby's server goes; the worker's takes the port
    metrics.standby.set(0)
    eliot.log_message(message_type="wa_trio:standby:took_over")
    print("wa-trio: took over the session", file=sys.stderr, flush=True)
    return lock


__all__ = ["stand_by"]
