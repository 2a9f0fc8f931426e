"""``wa-trio accounts`` on files (issue 30): it finds the running worker through the address
the worker left in its session folder, not through HTTP_PORT given again."""

from __future__ import annotations

import json
import stat

import pytest
import trio

from tests.conftest import DeleteAfter, StartWorker
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.stores.files import HTTP_ADDRESS_FILE


async def test_accounts_finds_the_worker_without_its_port(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = await start_worker(delete_after(cli_settings))  # HTTP_PORT=0: a port of its own
    address = cli_settings.session_path / HTTP_ADDRESS_FILE
    assert address.read_text().strip() == worker.http_url
    assert stat.S_IMODE(address.stat().st_mode) == 0o600
    monkeypatch.setenv("HTTP_PORT", "1")  # what the CLI would have guessed: nobody there
    assert await trio.to_thread.run_sync(main, ["accounts", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["account"], row["state"]) for row in rows] == [("default", "connected")]
    assert rows[0]["holder"] == "a worker on this host"
