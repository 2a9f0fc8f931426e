"""The operator's console walked in a real browser (issue 31): headless Debian Chromium driven
by Playwright, against a two-account dry-run process and the local RabbitMQ. Login with the
token, both accounts and their states, dead letters of two codes, an opt-out added and removed,
the opted-out job replayed and seen sent, its story found by message id; nothing without the
token, a cross-site POST refused, no full number and no token on any page. Each page's
screenshot is saved under ``build/test-artifacts/console/`` (docs/console.md shows them)."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import (
    delete_topology,
    job_body,
    publish_many,
    queue_count,
    require_tool,
    sent_records,
    wait_for,
)
from wa_trio.accounts.multi import Accounts
from wa_trio.config.settings import Settings
from wa_trio.core.identity import person_key
from wa_trio.log import configure_logging
from wa_trio.run import run_worker

pytestmark = pytest.mark.browser

TOKEN = "console-token-0123456789abcdef"
NUMBER = "+5511999990001"
ARTIFACTS = Path(os.environ.get("WA_TRIO_ARTIFACTS", "build/test-artifacts")) / "console"


@pytest.fixture
def two(make_env: Callable[..., dict[str, str]], tmp_path: Path) -> Iterator[Settings]:
    settings = Settings.from_env(
        make_env(
            WHATSAPP_ACCOUNTS="a,b",
            WHATSAPP_ADMIN_TOKEN=TOKEN,
            LOG_TO_FILE="true",
            LOG_DIR=str(tmp_path / "logs"),
        )
    )
    handle = configure_logging(settings, io.StringIO())
    try:
        yield settings
    finally:
        handle.close()


class Browser:
    """Playwright's sync API in a worker thread (one call at a time)."""

    def __init__(self, base: str) -> None:
        from playwright.sync_api import sync_playwright

        exe = require_tool("chromium", "chromium-browser", how="apt install chromium")
        self.base = base
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        self.context = self._browser.new_context(
            http_credentials={"username": "operator", "password": TOKEN},
            viewport={"width": 1200, "height": 900},
        )
        self.page = self.context.new_page()
        self.seen: list[str] = []

    def visit(self, path: str, shot: str | None = None) -> str:
        self.page.goto(self.base + path)
        return self._look(shot)

    def click(self, selector: str, shot: str | None = None) -> str:
        self.page.click(selector)
        self.page.wait_for_load_state()
        return self._look(shot)

    def fill(self, selector: str, text: str) -> None:
        self.page.fill(selector, text)

    def _look(self, shot: str | None) -> str:
        html = self.page.content()
        self.seen.append(html)
        if shot:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        return html

    def cross_site_post(self, path: str, fields: dict[str, str]) -> int:
        """A page of another origin (about:blank) submitting a form to the console."""
        other = self._browser.new_page()  # no cookie of ours, the Basic credential neither
        inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
        other.set_content(f'<form method="post" action="{self.base}{path}">{inputs}</form>')
        with other.expect_response(re.compile(re.escape(path))) as answer:
            other.evaluate("document.forms[0].submit()")
        status = answer.value.status
        other.close()
        return status

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def _browse(settings: Settings, accounts: Accounts) -> list[str]:
    """The whole browser session in one worker thread: Playwright's sync API belongs to the
    thread that started it (a pool thread per call fails: "Cannot switch to a different
    thread"); the trio side (publishing, waiting) is called back with ``trio.from_thread``."""
    browser = Browser(accounts.http_url)
    try:
        _pages(settings, accounts, browser)
    finally:
        browser.close()
    return browser.seen


def _trio(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return trio.from_thread.run(partial(call, *args, **kwargs))


async def test_the_console_walked_in_a_browser(two: Settings, nursery: trio.Nursery) -> None:
    settings = two
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    accounts: Accounts = await nursery.start(
        lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
    )
    try:
        await wait_for(lambda: len(accounts.workers) == 2, what="two accounts")
        await _walk(settings, accounts)
    finally:
        accounts.stop()
        for name in settings.accounts:
            await delete_topology(settings.for_account(name))
        await delete_topology(settings)


async def _walk(settings: Settings, accounts: Accounts) -> None:
    base = accounts.http_url
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/console/accounts")).status_code == 401
        wrong = await http.get("/console/accounts", auth=("operator", "not-the-token"))
        assert wrong.status_code == 401
        forged = await http.post("/console/optouts", data={"action": "add", "number": NUMBER})
        assert forged.status_code == 401
    seen = await trio.to_thread.run_sync(_browse, settings, accounts)
    # no page ever held a full number or the token
    for html in seen:
        assert "5511999990001" not in html and TOKEN not in html


def _pages(settings: Settings, accounts: Accounts, browser: Browser) -> None:
    html = browser.visit("/console", "accounts")
    for name in ("a", "b"):
        assert re.search(
            rf'data-account="{name}">\s*<td>{name}</td>\s*<td class="ok">connected', html
        )
    # an opt-out through the console, then a job to that number: dead-lettered opted_out
    browser.visit("/console/optouts")
    browser.fill("#add-number", "+55 (11) 99999-0001")
    html = browser.click("#add", "optouts")
    assert "+55*******0001 added to the list" in html
    # each account reloads the shared list within a second (account_safety.FLUSH_EVERY)
    _trio(
        wait_for,
        lambda: all(
            person_key(NUMBER) in worker.safety._optouts for worker in accounts.workers.values()
        ),
        what="every account sees the opt-out",
    )
    _trio(
        publish_many,
        settings,
        [job_body(1, destination=NUMBER), b"{not json", job_body(2, destination="+5511988887777")],
        message_ids=["job-opted", "job-broken", "job-fine"],
    )
    _trio(wait_for, lambda: len(sent_records(settings.dry_run_file)) == 1, what="one sent")
    _trio(wait_for, _dlq(settings, 2), what="two dead letters")
    html = browser.visit("/console/dead-letters", "dead-letters")
    assert 'id="code-opted_out"' in html and 'id="code-invalid_json"' in html
    assert "+55*******0001" in html
    # the cross-site form is refused and changes nothing
    status = browser.cross_site_post("/console/optouts", {"action": "remove"})
    assert status in {401, 403}
    # remove the opt-out, then replay the one letter (confirmed) and see it sent
    browser.visit("/console/optouts")
    html = browser.click("button.remove")
    assert "removed from the list" in html
    _trio(
        wait_for,
        lambda: (
            not any(
                person_key(NUMBER) in worker.safety._optouts for worker in accounts.workers.values()
            )
        ),
        what="every account sees the opt-out gone",
    )
    browser.visit("/console/dead-letters")
    html = browser.click('tr[data-key="job-opted"] a:text("replay")', "confirm-replay")
    assert "Replay job job-opted?" in html
    html = browser.click("#confirm", "replayed")
    assert "replay: 1 taken" in html
    _trio(wait_for, lambda: len(sent_records(settings.dry_run_file)) == 2, what="replayed, sent")
    html = browser.visit("/console/queues", "queues")
    assert 'data-queue="' + settings.dlq_name + '"' in html
    # the job's story by its message id: dead-lettered, then taken again and sent
    browser.visit("/console/jobs")
    browser.fill("input[name=q]", "job-opted")
    html = browser.click("#find", "job-story")
    events = re.findall(r"<td>(\w+)</td><td>", html.split('id="events"')[1].split("</table>")[0])
    assert events == [
        "taken", "dead_lettered", "failed", "taken", "whatsapp_accepted", "success"
    ], events  # fmt: skip
    assert "<td>sent</td>" in html.split('id="ledger"')[1].split("</table>")[0]
    assert "wa_trio:job" in html.split('id="tree"')[1]


def _dlq(settings: Settings, count: int) -> Any:
    async def check() -> bool:
        return await queue_count(settings, settings.dlq_name) == count

    return check
