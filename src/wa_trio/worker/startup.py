"""What start-up checks and builds before the root nursery (``app.py``): the transport
WHATSAPP_TRANSPORT names, the media tools neonize needs, the templates, the operator token, and
the signals that start a graceful stop."""

from __future__ import annotations

import resource
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TextIO

import attrs
import eliot
import trio

from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.config.settings import Settings
from wa_trio.core.backlog import oldest_job_age
from wa_trio.core.media_rules import ffmpeg_kinds
from wa_trio.core.templates import TemplateError, TemplateSet
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.pipeline.consumer import Pipeline
from wa_trio.stores import open as stores
from wa_trio.stores.files import StartupError
from wa_trio.transport import Transport
from wa_trio.transport.cloud_api.dedup import WebhookSeen
from wa_trio.transport.cloud_api.webhook import MetaWebhook
from wa_trio.transport.inbound import InboundMessage
from wa_trio.transport.receipts import ReceiptInfo


def build_transport(settings: Settings) -> Transport:
    """The transport WHATSAPP_TRANSPORT names."""
    redactor = Redactor(settings.production)
    if settings.transport == "dry-run":
        from wa_trio.transport.dry_run import DryRunTransport, FailurePlan

        fail = FailurePlan(settings.dry_run_fail_rate) if settings.dry_run_fail_rate else None
        return DryRunTransport(
            settings.dry_run_file, redactor, fail=fail, account=settings.account_name
        )
    if settings.transport == "cloud-api":
        from wa_trio.transport.cloud_api import CloudApiTransport

        return CloudApiTransport(settings, redactor)
    from wa_trio.transport.neonize import NeonizeTransport

    return NeonizeTransport(settings, redactor)


def check_media_tools(
    settings: Settings,
    which: Callable[[str], str | None] = shutil.which,
    out: TextIO | None = None,
) -> Settings:
    """Voice notes (both transports), audio and video (neonize: lengths, thumbnails) are
    prepared with ffmpeg/ffprobe (``media/prepare.py``). Without them those kinds are switched
    off (jobs of them are dead-lettered ``media_unsupported``) and the start says so once: a
    text-only deployment, the Go worker's whole contract, never needs ffmpeg (issue 30). The
    settings to run with."""
    needs = ffmpeg_kinds(*settings.transports)
    needing = sorted(set(settings.media_kinds) & needs)
    missing = [tool for tool in ("ffmpeg", "ffprobe") if which(tool) is None]
    if not (needing and missing):
        return settings
    line = (
        f"wa-trio: {' and '.join(missing)} not found: media kinds {', '.join(needing)} are off "
        "(jobs of them are dead-lettered media_unsupported); install ffmpeg to send them"
    )
    print(line, file=out if out is not None else sys.stderr, flush=True)
    eliot.log_message(message_type="wa_trio:media:kinds_off", kinds=needing, missing=missing)
    kinds = tuple(kind for kind in settings.media_kinds if kind not in needs)
    return attrs.evolve(settings, media_kinds=kinds)


#: file descriptors a process needs besides its accounts, and per account (measured: 200
#: accounts held 3,211 fds, 16 each: AMQP connections, the session and ledger files, neonize's
#: sockets; with a margin for reconnects)
FDS_BASE = 64
FDS_PER_ACCOUNT = 24


def fd_plan(accounts: int, soft: int, hard: int) -> tuple[int | None, str | None]:
    """(the soft limit to raise RLIMIT_NOFILE to, or None; the one-line refusal, or None)."""
    need = FDS_BASE + accounts * FDS_PER_ACCOUNT
    if soft == resource.RLIM_INFINITY or need <= soft:
        return None, None
    if hard == resource.RLIM_INFINITY or need <= hard:
        return need, None
    return None, (
        f"{accounts} accounts need about {need} open files; this process may open {hard} "
        "(ulimit -n): raise the limit (podman run --ulimit nofile=N:N) or run fewer accounts "
        "per process"
    )


def ensure_fd_room(accounts: int) -> None:
    """Raise the soft open-files limit when the accounts need it; one line when even the hard
    limit is too low (past it the start was a traceback, issue 26).

    Raises:
        StartupError: the limit cannot be raised far enough.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_to, refusal = fd_plan(accounts, soft, hard)
    if refusal is not None:
        raise StartupError(refusal)
    if raise_to is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raise_to, hard))


def load_templates(settings: Settings) -> TemplateSet:
    """Every template compiled (a broken one stops start-up with one line: file and line)."""
    try:
        return TemplateSet.load(settings.templates_dir)
    except TemplateError as error:
        raise StartupError(f"templates: {error.message}") from None


def admin_token(settings: Settings, out: TextIO | None = None) -> str:
    """WHATSAPP_ADMIN_TOKEN, or one made for this run and printed once to the terminal (never
    to the log), as an operator needs it to open /login."""
    if settings.admin_token:
        return settings.admin_token
    token = secrets.token_urlsafe(24)
    print(
        "wa-trio: WHATSAPP_ADMIN_TOKEN is unset; the operator token for /login for this run is "
        f"{token} (HTTP Basic password, any user name)",
        file=out or sys.stderr,
        flush=True,
    )
    return token


async def watch_signals(stop: trio.Event) -> None:
    """SIGTERM, SIGINT and SIGHUP start a graceful stop (there is no reload: a supervisor
    restarts the worker with its new configuration); a second signal stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():  # a second signal: the operator will not wait for the drain
                eliot.log_message(message_type="wa_trio:signal", signal=name, action="stop now")
                raise KeyboardInterrupt
            eliot.log_message(message_type="wa_trio:signal", signal=name)
            stop.set()


def wire_gauges(
    settings: Settings, metrics: Metrics, pipeline: Pipeline, monitor: BrokerMonitor
) -> None:
    """Gauges read at scrape time from the parts that know (the alert rules use them)."""
    metrics.ledger_failing.set_function(
        lambda: 1.0 if pipeline.statistics().ledger_problem else 0.0
    )
    metrics.oldest_job_age.set_function(
        lambda: oldest_job_age(
            time.time(), monitor.depth, monitor.backlog_since, pipeline.last_taken_published
        )
    )
    webhooks = settings.status_webhook_url is not None
    metrics.webhook_limit.set(settings.status_webhook_max_pending if webhooks else 0)


def meta_webhook(
    settings: Settings,
    metrics: Metrics,
    on_receipt: Callable[[ReceiptInfo], None],
    on_inbound: Callable[[InboundMessage], None],
) -> MetaWebhook | None:
    """Meta's webhook routes, served only with the Cloud API transport, with the store of the
    items already handled (redeliveries dropped: transport/cloud_api/dedup.py)."""
    if settings.transport != "cloud-api":
        return None
    assert settings.cloud_app_secret and settings.cloud_verify_token  # Settings requires them
    seen = WebhookSeen(partial(stores.webhook_seen, settings))
    return MetaWebhook(
        settings.cloud_app_secret,
        settings.cloud_verify_token,
        metrics,
        on_receipt,
        on_inbound,
        seen,
    )


__all__ = [
    "admin_token",
    "build_transport",
    "check_media_tools",
    "load_templates",
    "meta_webhook",
    "watch_signals",
    "wire_gauges",
]
