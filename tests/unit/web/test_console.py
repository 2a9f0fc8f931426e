"""The console's guard and pages with a source of our own (web/console*.py): who may see what,
what a state-changing request needs, and that arbitrary input never ends a request in a 500."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart_trio import QuartTrio

from wa_trio.bus.dlq import DeadLetter, ReplayReport
from wa_trio.core.story import LedgerRow, Story, StoryEvent
from wa_trio.log import mask_phone
from wa_trio.stores.contacts import OptOut
from wa_trio.web.console import AccountRow, QueueRow, QueueSummary, console_routes
from wa_trio.web.console_auth import COOKIE, ConsoleAuth

TOKEN = "unit-console-token-0123456789"
NUMBER = "+5511999990001"


@attrs.define
class FakeSource:
    optout_numbers: set[str] = attrs.field(factory=lambda: {NUMBER})
    taken: list[tuple[str, str | None, str | None, int]] = attrs.field(factory=list)

    async def accounts(self) -> list[AccountRow]:
        return [
            AccountRow("a", "connected", "+55*******0001", 3.0, 1, 5, None, None, None, "/login")
        ]

    async def queues(self) -> QueueSummary:
        return QueueSummary(
            (QueueRow("q", "jobs", 4), QueueRow("q.dlq", "dead letters", 2)), 6.0, 5.0, "3 s", 60
        )

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return [
            DeadLetter(
                "m-1", "opted_out", "opted out", "2026-12-05", 0, 10, "m-1", "+55*******0001"
            ),
            DeadLetter("m-2", "invalid_json", "bad", None, 1, 3, "m-2", None),
        ][:limit]

    async def replay(self, code: str | None, key: str | None, limit: int) -> ReplayReport:
        self.taken.append(("replay", code, key, limit))
        return ReplayReport(1, 1)

    async def drop(self, code: str | None, key: str | None, limit: int) -> ReplayReport:
        self.taken.append(("drop", code, key, limit))
        return ReplayReport(1, 1)

    async def optouts(self) -> list[OptOut]:
        return [OptOut(n, 1.0, "inbound") for n in sorted(self.optout_numbers)]

    async def set_optout(self, number: str, add: bool, by: str) -> bool:
        before = number in self.optout_numbers
        (self.optout_numbers.add if add else self.optout_numbers.discard)(number)
        return before != add

    async def story(self, query: str) -> tuple[Story, str | None]:
        row = LedgerRow("a", query, "sent", "WA1", 1.0, 7)
        events = (StoryEvent(1.0, "taken", "delivery 1"), StoryEvent(2.0, "success"))
        return Story(query, (query,), (row,), events, (), "tree", True), None

    def shown(self, number: str) -> str:
        return mask_phone(number)


def _app(source: FakeSource) -> QuartTrio:
    app = QuartTrio("test_console")
    console_routes(app, source, ConsoleAuth(TOKEN))
    return app


BASIC = {"Authorization": "Bearer " + TOKEN}


def _run(call: Any) -> Any:
    return trio.run(call)


def test_nothing_without_the_token_and_a_session_after_it() -> None:
    source = FakeSource()
    app = _app(source)

    async def main() -> None:
        client = app.test_client()
        for path in ("/console", "/console/accounts", "/console/optouts", "/console/jobs?q=x"):
            assert (await client.get(path)).status_code == 401, path
        wrong = await client.get("/console/accounts", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        first = await client.get("/console/accounts", headers=BASIC)
        assert first.status_code == 200
        cookie = first.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert first.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in first.headers["Content-Security-Policy"]
        again = await client.get("/console/queues")  # the cookie alone now
        assert again.status_code == 200 and "dead letters" in await again.get_data(as_text=True)
        forged = client.cookie_jar  # a cookie signed with another token is no session
        assert forged is not None
        other = ConsoleAuth("another-token-0123456789").cookie_value("s")
        bad = await app.test_client().get(
            "/console/accounts", headers={"Cookie": f"{COOKIE}={other}"}
        )
        assert bad.status_code == 401

    _run(main)


def test_a_state_change_needs_its_csrf_token_and_the_same_origin() -> None:
    source = FakeSource()
    app = _app(source)

    async def main() -> None:
        client = app.test_client()
        page = await client.get("/console/optouts", headers=BASIC)
        html = await page.get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        assert csrf is not None
        add = {"action": "add", "number": "+55 11 98888-7777"}
        no_csrf = await client.post("/console/optouts", form=add)
        assert no_csrf.status_code == 403
        wrong = await client.post("/console/optouts", form={**add, "csrf": "0" * 64})
        assert wrong.status_code == 403
        cross = await client.post(
            "/console/optouts",
            form={**add, "csrf": csrf.group(1)},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403
        assert "+5511988887777" not in source.optout_numbers
        ok = await client.post("/console/optouts", form={**add, "csrf": csrf.group(1)})
        assert ok.status_code == 303 and "+5511988887777" in source.optout_numbers

    _run(main)


def test_opt_outs_are_masked_and_removed_by_reference_not_by_number() -> None:
    source = FakeSource()
    app = _app(source)

    async def main() -> None:
        client = app.test_client()
        html = await (await client.get("/console/optouts", headers=BASIC)).get_data(as_text=True)
        assert "5511999990001" not in html and "+55*******0001" in html
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        ref = re.search(r'name="ref" value="([0-9a-f]+)"', html)
        assert csrf and ref
        gone = await client.post(
            "/console/optouts",
            form={"action": "remove", "ref": ref.group(1), "csrf": csrf.group(1)},
        )
        assert gone.status_code == 303 and source.optout_numbers == set()
        unknown = await client.post(
            "/console/optouts", form={"action": "remove", "ref": "f" * 32, "csrf": csrf.group(1)}
        )
        assert "problem=" in unknown.headers["Location"]

    _run(main)


def test_dead_letters_are_grouped_and_changed_only_after_a_confirmation() -> None:
    source = FakeSource()
    app = _app(source)

    async def main() -> None:
        client = app.test_client()
        html = await (await client.get("/console/dead-letters", headers=BASIC)).get_data(
            as_text=True
        )
        assert 'id="code-invalid_json"' in html and 'id="code-opted_out"' in html
        assert source.taken == []  # links only: a GET changes nothing
        confirm = await client.get("/console/dead-letters/confirm?action=drop&code=opted_out")
        text = await confirm.get_data(as_text=True)
        assert "Drop for good every letter of code opted_out" in text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', text)
        assert csrf
        done = await client.post(
            "/console/dead-letters",
            form={"action": "drop", "code": "opted_out", "csrf": csrf.group(1)},
        )
        assert done.status_code == 303
        one = await client.post(
            "/console/dead-letters",
            form={"action": "replay", "message_id": "m-1", "csrf": csrf.group(1)},
        )
        assert one.status_code == 303
        assert source.taken == [("drop", "opted_out", None, 500), ("replay", None, "m-1", 1)]
        both = await client.post(
            "/console/dead-letters",
            form={"action": "replay", "message_id": "m-1", "code": "x", "csrf": csrf.group(1)},
        )
        assert both.status_code == 400

    _run(main)


def test_the_job_page_shows_the_story() -> None:
    app = _app(FakeSource())

    async def main() -> str:
        page = await app.test_client().get("/console/jobs?q=job-7", headers=BASIC)
        return str(await page.get_data(as_text=True))

    html = _run(main)
    assert "<td>job-7</td><td>sent</td><td>WA1</td>" in html and "<td>7</td>" in html
    assert "delivery 1" in html and 'id="tree"' in html


def test_a_page_escapes_what_it_shows() -> None:
    app = _app(FakeSource())

    async def main() -> str:
        page = await app.test_client().get("/console/jobs?q=<script>x</script>", headers=BASIC)
        return str(await page.get_data(as_text=True))

    html = _run(main)
    assert "<script>" not in html and "&lt;script&gt;" in html


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(
        ["/console/jobs", "/console/optouts", "/console/dead-letters/confirm", "/console/queues"]
    ),
    args=st.dictionaries(
        st.sampled_from(["q", "action", "code", "message_id", "done", "problem"]),
        st.text(max_size=80),
        max_size=4,
    ),
    form=st.dictionaries(
        st.sampled_from(["action", "code", "message_id", "number", "ref"]),
        st.text(max_size=80),
        max_size=4,
    ),
)
def test_any_input_gets_an_answer_never_a_crash(
    path: str, args: dict[str, str], form: dict[str, str]
) -> None:
    source = FakeSource()
    app = _app(source)

    async def main() -> tuple[int, int]:
        client = app.test_client()
        got = await client.get(path, query_string=args, headers=BASIC)
        page = await client.get("/console/optouts")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.get_data(as_text=True))
        assert csrf
        target = (
            "/console/optouts" if "number" in form or "ref" in form else "/console/dead-letters"
        )
        posted = await client.post(target, form={**form, "csrf": csrf.group(1)})
        return got.status_code, posted.status_code

    got, posted = trio.run(main)
    assert got in {200, 303, 400}
    assert posted in {303, 400}


@pytest.mark.parametrize("given_token", ["", "x", TOKEN + "x"])
def test_the_csrf_token_is_the_sessions_own(given_token: str) -> None:
    auth = ConsoleAuth(TOKEN)
    assert auth.csrf_ok("s1", auth.csrf("s1"))
    assert not auth.csrf_ok("s2", auth.csrf("s1"))
    assert not auth.csrf_ok("s1", given_token)
    assert auth.ref(NUMBER) != auth.ref("+5511999990002") and NUMBER not in auth.ref(NUMBER)
