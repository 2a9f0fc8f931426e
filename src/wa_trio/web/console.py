"""The operator's console (issue 31): accounts, queues, dead letters, opt-outs and one job's
story, server-rendered (Jinja2, autoescaped; no script, no build step), under /console.

What it shows comes from a ``ConsoleSource`` (``worker/console_source.py`` builds it from the
running workers, the broker and the stores); this module only checks who asks (``console_auth``),
reads forms, and renders. It never shows a token, never a full phone number in production
(numbers arrive masked; the opt-out list's buttons carry an opaque reference, not the number),
and never a job's text (the log and the story never hold it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
from jinja2 import Environment, PackageLoader, select_autoescape
from quart import Response, request
from quart_trio import QuartTrio

from wa_trio.bus.dlq import DeadLetter, ReplayReport
from wa_trio.core.story import Story
from wa_trio.stores.contacts import OptOut
from wa_trio.web.console_auth import COOKIE, Access, ConsoleAuth, same_origin

REFRESH = 10  # seconds between a page's own refreshes (accounts, queues)
LETTERS_SHOWN = 200  # dead letters listed (the DLQ is read without taking them)
BOUND = 500  # at most this many letters replayed or dropped by one confirmation
OPTOUTS_SHOWN = 500

_PAGES = Environment(
    loader=PackageLoader("wa_trio.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form POST say Origin: null
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}


@attrs.frozen
class AccountRow:
    name: str
    state: str
    linked: str | None  # masked in production
    pacing_tokens: float | None
    unanswered_highest: int | None
    unanswered_limit: int | None
    banned_until: str | None
    last_send: str | None
    holder: str | None  # another replica holding the account (PostgreSQL)
    login_url: str | None


@attrs.frozen
class QueueRow:
    name: str
    role: str
    depth: int | None  # None: the broker could not say


@attrs.frozen
class QueueSummary:
    queues: tuple[QueueRow, ...]
    jobs_in_per_minute: float | None
    jobs_out_per_minute: float | None
    oldest_age: str | None
    window: int


class ConsoleSource(Protocol):
    """What the console reads and changes (blocking work is the source's to move off trio)."""

    async def accounts(self) -> list[AccountRow]: ...
    async def queues(self) -> QueueSummary: ...
    async def dead_letters(self, limit: int) -> list[DeadLetter]: ...
    async def replay(
        self, code: str | None, message_id: str | None, limit: int
    ) -> ReplayReport: ...
    async def drop(self, code: str | None, message_id: str | None, limit: int) -> ReplayReport: ...
    async def optouts(self) -> list[OptOut]: ...
    async def set_optout(self, number: str, add: bool, by: str) -> bool: ...
    async def story(self, query: str) -> tuple[Story, str | None]: ...
    def shown(self, number: str) -> str: ...


def when(at: float | None) -> str:
    if not at:
        return "—"
    return datetime.fromtimestamp(at, UTC).isoformat(sep=" ", timespec="seconds")


def render(name: str, **context: Any) -> str:
    return _PAGES.get_template(f"console/{name}").render(when=when, **context)


Handler = Callable[[Access], Awaitable[Response]]


def console_routes(app: QuartTrio, source: ConsoleSource, auth: ConsoleAuth) -> None:
    """The console's routes on ``app`` (the one-account app and the accounts app alike)."""
    from wa_trio.web.console_views import views

    for rule, methods, view in views(source, auth):
        endpoint = f"console {rule} {methods[0]}"
        app.add_url_rule(rule, endpoint, _guarded(auth, view), methods=methods)


def _guarded(auth: ConsoleAuth, view: Handler) -> Callable[[], Awaitable[Response]]:
    """Token or session first; POSTs also need their CSRF token and a same-origin request."""

    async def guarded() -> Response:
        access = auth.check(request.headers.get("Authorization"), request.cookies.get(COOKIE))
        if not access.ok:
            return Response(
                "operator token required (HTTP Basic password, or Authorization: Bearer)\n",
                status=401,
                content_type="text/plain; charset=utf-8",
                headers={"WWW-Authenticate": 'Basic realm="wa-trio", charset="UTF-8"'},
            )
        if request.method == "POST":
            form = await request.form
            if not same_origin(request.headers) or not auth.csrf_ok(
                access.session, form.get("csrf")
            ):
                return Response("cross-site request refused\n", status=403)
        response = await view(access)
        response.headers.update(_HEADERS)
        if access.fresh:
            auth.set_cookie(response, access.session, secure=request.scheme == "https")
        return response

    return guarded


def page(html: str) -> Response:
    return Response(html, content_type="text/html; charset=utf-8")


def see(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


__all__ = [
    "AccountRow",
    "ConsoleSource",
    "QueueRow",
    "QueueSummary",
    "console_routes",
    "page",
    "render",
    "see",
    "when",
]
