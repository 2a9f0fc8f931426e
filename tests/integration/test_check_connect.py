"""``wa-trio check --connect`` (issue 30): what ``run`` would meet, every problem in one run."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from wa_trio.cli.main import main


def _use(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


async def test_a_good_setup_passes_and_says_what_it_tried(
    make_env: Callable[..., dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use(make_env(), monkeypatch)
    assert await trio.to_thread.run_sync(main, ["check", "--connect"]) == 0
    out = capsys.readouterr().out
    assert "ok: broker amqp://guest:***@127.0.0.1:5672/" in out and "logged in" in out
    assert "ok: HTTP 127.0.0.1:0: free" in out
    assert "problem:" not in out


async def test_every_problem_is_one_line_in_one_run(
    make_env: Callable[..., dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _use(
            make_env(
                RABBITMQ_URL="amqp://guest:wrong-password@127.0.0.1:5672/",
                HTTP_PORT=str(port),
                WHATSAPP_TEMPLATES_DIR="/nonexistent/templates",
            ),
            monkeypatch,
        )
        assert await trio.to_thread.run_sync(main, ["check", "--connect"]) == 2
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, problems
    assert any("broker" in line and "wrong-password" not in line for line in problems)
    assert any(f"127.0.0.1:{port}" in line for line in problems)
    assert any("templates" in line for line in problems)


def test_missing_cloud_settings_are_named_together(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WHATSAPP_TRANSPORT", "cloud-api")
    for name in ("PHONE_NUMBER_ID", "ACCESS_TOKEN", "APP_SECRET", "VERIFY_TOKEN"):
        monkeypatch.delenv(f"WHATSAPP_CLOUD_{name}", raising=False)
    monkeypatch.setenv("HTTP_PORT", "not-a-port")
    assert main(["check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "HTTP_PORT" in err[0]  # a bad value first: one line each
    monkeypatch.setenv("HTTP_PORT", "8080")
    assert main(["check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    for name in ("PHONE_NUMBER_ID", "ACCESS_TOKEN", "APP_SECRET", "VERIFY_TOKEN"):
        assert f"WHATSAPP_CLOUD_{name}" in err[0]
