"""The CLI's main() in-process (the subprocess tests in test_cli.py cover real exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wa_trio.cli.main import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RABBITMQ_URL", "HTTP_PORT", "WHATSAPP_CONTENT_FILTER"):
        monkeypatch.delenv(name, raising=False)


def test_check_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "RABBITMQ_PASSWORD=***" in out
    assert "WHATSAPP_CONTENT_FILTER=on" in out
    assert "HTTP_PORT=8080" in out


def test_config_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HTTP_PORT", "http")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wa-trio: invalid configuration: HTTP_PORT='http'")


def test_validate_respects_content_filter_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
                "text_message": "<script>x</script>",
                "destination": "+5511999999999",
            }
        )
    )
    assert main(["validate", str(job)]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "content_rejected"
    monkeypatch.setenv("WHATSAPP_CONTENT_FILTER", "off")
    assert main(["validate", str(job)]) == 0


def test_send_refuses_invalid_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--destination", "+5511999999999", "--text", "   "]) == 1
    assert "empty_text" in capsys.readouterr().err
