"""The console's pages, one function each (``console.py`` guards them and renders)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from itertools import groupby
from urllib.parse import quote

from quart import Response, request

from wa_trio.core.envelope import ValidationError, clean_destination
from wa_trio.core.errors import WaTrioError
from wa_trio.core.identity import person_key
from wa_trio.web.console import (
    BOUND,
    LETTERS_SHOWN,
    OPTOUTS_SHOWN,
    REFRESH,
    ConsoleSource,
    page,
    render,
    see,
    when,
)
from wa_trio.web.console_auth import Access, ConsoleAuth

View = Callable[[Access], Awaitable[Response]]


class _Views:
    """Each page: a method taking the request's ``Access``."""

    def __init__(self, source: ConsoleSource, auth: ConsoleAuth) -> None:
        self.source = source
        self.auth = auth

    async def home(self, _access: Access) -> Response:
        return see("/console/accounts")

    async def accounts(self, _access: Access) -> Response:
        rows = await self.source.accounts()
        return page(
            render(
                "accounts.html", title="Accounts", page="accounts", refresh=REFRESH, accounts=rows
            )
        )

    async def queues(self, _access: Access) -> Response:
        try:
            summary, problem = await self.source.queues(), None
        except WaTrioError as error:
            summary, problem = None, f"the broker cannot be asked: {error.message}"
        return page(
            render(
                "queues.html",
                title="Queues",
                page="queues",
                refresh=REFRESH,
                summary=summary,
                problem=problem,
            )
            if summary is not None
            else render(
                "base.html", title="Queues", page="queues", refresh=REFRESH, problem=problem
            )
        )

    async def letters(self, _access: Access) -> Response:
        try:
            found, problem = await self.source.dead_letters(LETTERS_SHOWN), None
        except WaTrioError as error:
            found, problem = [], f"the DLQ cannot be read: {error.message}"
        ordered = sorted(found, key=lambda letter: letter.code)
        groups = [(code, list(each)) for code, each in groupby(ordered, key=lambda x: x.code)]
        return page(
            render(
                "dead_letters.html",
                title="Dead letters",
                page="dead-letters",
                groups=groups,
                limit=LETTERS_SHOWN,
                bound=BOUND,
                done=request.args.get("done"),
                problem=problem,
            )
        )

    async def confirm(self, access: Access) -> Response:
        action = request.args.get("action", "")
        code = request.args.get("code") or None
        message_id = request.args.get("message_id") or None
        if action not in {"replay", "drop"} or (code is None) == (message_id is None):
            return Response("choose replay or drop, of one code or one message id\n", status=400)
        what = f"every letter of code {code} (at most {BOUND})" if code else f"job {message_id}"
        verb = "Replay" if action == "replay" else "Drop for good"
        return page(
            render(
                "confirm.html",
                title="Confirm",
                page="dead-letters",
                question=f"{verb} {what}?",
                button=verb,
                action=action,
                code=code,
                message_id=message_id,
                csrf=self.auth.csrf(access.session),
            )
        )

    async def change_letters(self, _access: Access) -> Response:
        form = await request.form
        action = form.get("action")
        code = form.get("code") or None
        message_id = form.get("message_id") or None
        if action not in {"replay", "drop"} or (code is None) == (message_id is None):
            return Response("choose replay or drop, of one code or one message id\n", status=400)
        limit = 1 if message_id else BOUND
        run = self.source.replay if action == "replay" else self.source.drop
        report = await run(code, message_id, limit)
        done = f"{action}: {report.replayed} taken, {report.left} left in the DLQ"
        return see(f"/console/dead-letters?done={quote(done)}")

    async def optouts(self, access: Access) -> Response:
        query = request.args.get("q", "").strip()
        listed = await self.source.optouts()
        wanted = _number(query) if query else None
        found = [o for o in listed if wanted is None or o.number == wanted]
        rows = [
            {"shown": self.source.shown(o.number), "since": when(o.added_at), "source": o.source,
             "ref": self.auth.ref(o.number)}
            for o in found[:OPTOUTS_SHOWN]
        ]  # fmt: skip
        return page(
            render(
                "optouts.html",
                title="Opt-outs",
                page="optouts",
                query=query,
                optouts=rows,
                total=len(found),
                csrf=self.auth.csrf(access.session),
                done=request.args.get("done"),
                problem=request.args.get("problem"),
            )
        )

    async def change_optouts(self, access: Access) -> Response:
        form = await request.form
        add = form.get("action") == "add"
        if add:
            number = _number(form.get("number", ""))
        else:
            refs = {self.auth.ref(o.number): o.number for o in await self.source.optouts()}
            number = refs.get(str(form.get("ref", "")))
        if number is None:
            return see("/console/optouts?problem=" + quote("not a phone number (or not listed)"))
        operator = hashlib.sha256(access.session.encode()).hexdigest()[:8]  # which session
        changed = await self.source.set_optout(number, add, f"console:{operator}")
        verb = "added to" if add else "removed from"
        state = "" if changed else " (nothing to change)"
        return see(
            f"/console/optouts?done={quote(f'{self.source.shown(number)} {verb} the list{state}')}"
        )

    async def job(self, _access: Access) -> Response:
        query = request.args.get("q", "").strip()[:512]
        story, note = await self.source.story(query) if query else (None, None)
        return page(
            render(
                "job.html", title="Job story", page="jobs", query=query, story=story, dlq_note=note
            )
        )


def views(source: ConsoleSource, auth: ConsoleAuth) -> list[tuple[str, list[str], View]]:
    """(rule, methods, view) of every console page."""
    pages = _Views(source, auth)
    return [
        ("/console", ["GET"], pages.home),
        ("/console/accounts", ["GET"], pages.accounts),
        ("/console/queues", ["GET"], pages.queues),
        ("/console/dead-letters", ["GET"], pages.letters),
        ("/console/dead-letters/confirm", ["GET"], pages.confirm),
        ("/console/dead-letters", ["POST"], pages.change_letters),
        ("/console/optouts", ["GET"], pages.optouts),
        ("/console/optouts", ["POST"], pages.change_optouts),
        ("/console/jobs", ["GET"], pages.job),
    ]


def _number(text: str) -> str | None:
    """Any form of a phone number -> the list's form (as ``wa-trio optout`` does), or None."""
    try:
        return clean_destination(person_key(str(text)[:64]))
    except ValidationError:
        return None


__all__ = ["views"]
