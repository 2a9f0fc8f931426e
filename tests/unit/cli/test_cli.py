"""The CLI as a user runs it: a real process, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GOOD = {
    "user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
    "text_message": "Hi",
    "destination": "+5511999999999",
}


def wa_trio(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RABBITMQ_", "WHATSAPP_", "HTTP_", "LOG_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wa_trio", *args],
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_subcommands() -> None:
    result = wa_trio("--help")
    assert result.returncode == 0
    for command in ("run", "check", "validate", "send", "login"):
        assert command in result.stdout


def test_check_prints_redacted_configuration() -> None:
    result = wa_trio("check", env={"RABBITMQ_URL": "amqp://u:hunter2@h:5672/v"})
    assert result.returncode == 0
    assert "RABBITMQ_URL=amqp://u:***@h:5672/v" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "WHATSAPP_QUEUE_NAME=whatsapp.queue" in result.stdout


def test_bad_configuration_is_one_line_and_exit_2() -> None:
    for command in ("check", "run"):
        result = wa_trio(command, env={"HTTP_PORT": "abc"})
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "HTTP_PORT" in lines[0] and "'abc'" in lines[0]


def test_bad_url_is_redacted_in_error() -> None:
    result = wa_trio("check", env={"RABBITMQ_URL": "http://u:hunter2@h/"})
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert "RABBITMQ_URL" in result.stderr


def test_validate_ok_and_error_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    result = wa_trio("validate", str(good))
    assert result.returncode == 0
    assert json.loads(result.stdout)["ok"] is True

    result = wa_trio("validate", "-", stdin=json.dumps({**GOOD, "destination": "12"}))
    assert result.returncode == 1
    assert json.loads(result.stdout)["code"] == "invalid_destination"


def test_send_refuses_invalid_job_before_publishing() -> None:
    result = wa_trio(
        "send",
        "--destination",
        "123",
        "--text",
        "hi",
        env={"RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )
    assert result.returncode == 1
    assert "invalid_destination" in result.stderr
