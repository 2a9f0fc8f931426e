"""``wa-trio check --connect``: what ``run`` would meet, tried now, every problem in one run.

Each check is one line: ``ok: ...``, ``warning: ...`` (it runs, with less) or ``problem: ...``
(``run`` would refuse or loop). Exit 0 with no problem, 2 otherwise. What is tried: the broker's
login and virtual host, the PostgreSQL store and the ``sslmode`` neonize gets, ffmpeg for the
media kinds that need it, the templates, the Cloud API number (a GET of its node, as the
transport's start does), and the HTTP port.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable

import trio

from wa_trio import http_client
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress
from wa_trio.config.redact import redact_url
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.media_rules import ffmpeg_kinds
from wa_trio.stores import open as stores

Line = tuple[str, str]  # (ok | warning | problem, what)


async def _broker(settings: Settings) -> Line:
    where = settings.redacted_url
    try:
        with trio.fail_after(10):
            async with amqp.connect(BrokerAddress.from_settings(settings)):
                pass
    except TimeoutError:
        return "problem", f"broker {where}: no answer in 10 s"
    except WaTrioError as error:
        return "problem", f"broker: {error.message}"
    return "ok", f"broker {where}: logged in, virtual host {settings.rabbitmq_vhost!r} open"


def _store(settings: Settings) -> Line | None:
    store = stores.postgres(settings)
    if store is None:
        return None
    try:
        url = stores.session_database(settings)
    except WaTrioError as error:
        return "problem", f"store: {error.message}"
    mode = "sslmode=" + url.split("sslmode=")[1].split("&")[0] if "sslmode=" in url else "?"
    return "ok", f"store {redact_url(store)}: reachable; neonize gets {mode}"


def _media(settings: Settings, which: Callable[[str], str | None] = shutil.which) -> Line | None:
    needs = ffmpeg_kinds(*settings.transports)
    if not needs:
        return None
    needing = sorted(set(settings.media_kinds) & needs)
    missing = [tool for tool in ("ffmpeg", "ffprobe") if which(tool) is None]
    if needing and missing:
        return "warning", f"{' and '.join(missing)} not found: media kinds {', '.join(needing)} off"
    return "ok", "media kinds: " + (", ".join(settings.media_kinds) or "none (text only)")


def _templates(settings: Settings) -> Line | None:
    if settings.templates_dir is None:
        return None
    from wa_trio.worker.startup import load_templates

    try:
        count = len(load_templates(settings).templates)
    except WaTrioError as error:
        return "problem", f"templates: {error.message}"
    return "ok", f"templates: {count} file(s) compiled"


async def _cloud(settings: Settings) -> Line | None:
    if settings.cloud_account is None:
        return None
    url = f"{settings.cloud_api_url}/{settings.cloud_phone_number_id}"
    headers = {"Authorization": f"Bearer {settings.cloud_access_token}"}
    try:
        async with http_client.client(10.0) as session:
            answer = await http_client.call_json(
                session, "GET", url, headers=headers, params={"fields": "display_phone_number"}
            )
    except http_client.HttpError as error:
        return "problem", f"Cloud API: {error.message}"
    if 200 <= answer.status < 300:
        return "ok", "Cloud API: the sending number answers"
    return "problem", f"Cloud API: the number's node answered HTTP {answer.status}"


def _port(settings: Settings) -> Line:
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((settings.http_host, settings.http_port))
        except OSError as error:
            return "problem", f"HTTP {settings.http_host}:{settings.http_port}: {error.strerror}"
    return "ok", f"HTTP {settings.http_host}:{settings.http_port}: free"


async def connect_checks(settings: Settings) -> list[Line]:
    lines: list[Line | None] = [await _broker(settings)]
    lines.append(await trio.to_thread.run_sync(_store, settings))
    lines += [_media(settings), _templates(settings), await _cloud(settings), _port(settings)]
    return [line for line in lines if line is not None]


def report(lines: list[Line]) -> bool:
    """Print the lines; whether none is a problem."""
    for kind, what in lines:
        print(f"{kind}: {what}")
    return all(kind != "problem" for kind, _ in lines)


__all__ = ["connect_checks", "report"]
