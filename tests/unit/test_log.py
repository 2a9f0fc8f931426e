from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import eliot
import pytest

from wa_trio.config.settings import Settings
from wa_trio.log import Redactor, configure_logging, log_file_path, mask_phone


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+5511999999999", "+55*******9999"), ("+29012345", "+29**2345"), ("+123", "+***")],
)
def test_mask_phone_in_production(number: str, masked: str) -> None:
    assert mask_phone(number) == masked
    assert mask_phone(number, production=False) == number


def test_redactor_follows_env() -> None:
    assert Redactor(True).phone("+5511999999999") != "+5511999999999"
    assert Redactor(False).phone("+5511999999999") == "+5511999999999"


def test_library_error_text_has_numbers_masked_in_production() -> None:
    text = (
        "failed to get device list: 5511999999999@s.whatsapp.net; "
        "+447700900123 unknown; 127.0.0.1:9 refused; error 479"
    )
    masked = Redactor(True).text(text)
    assert "5511999999999" not in masked and "447700900123" not in masked
    assert "+55*******9999@s.whatsapp.net" in masked
    assert "+44******0123 unknown" in masked
    assert "127.0.0.1:9 refused; error 479" in masked  # short numbers stay readable
    assert Redactor(False).text(text) == text


def test_production_writes_json_lines(make_env: Callable[..., dict[str, str]]) -> None:
    out = io.StringIO()
    handle = configure_logging(Settings.from_env(make_env(ENV="production")), out)
    try:
        eliot.log_message(message_type="wa_trio:test", value=1)
    finally:
        handle.close()
    record = json.loads(out.getvalue().splitlines()[-1])
    assert record["message_type"] == "wa_trio:test" and record["value"] == 1


def test_development_writes_readable_text(make_env: Callable[..., dict[str, str]]) -> None:
    out = io.StringIO()
    handle = configure_logging(Settings.from_env(make_env(ENV="development")), out)
    try:
        eliot.log_message(message_type="wa_trio:test", value=1)
    finally:
        handle.close()
    line = out.getvalue().splitlines()[-1]
    assert 'message_type="wa_trio:test"' in line and "value=1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_log_file_renders_with_eliot_tree(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    settings = Settings.from_env(make_env(LOG_TO_FILE="true", LOG_DIR=str(tmp_path / "logs")))
    handle = configure_logging(settings, io.StringIO())
    try:
        with eliot.start_action(action_type="wa_trio:job", job_key="k-1"):
            with eliot.start_action(action_type="wa_trio:job:validate"):
                pass
            eliot.log_message(message_type="wa_trio:job:acked")
    finally:
        handle.close()
    path = log_file_path(settings)
    assert path.exists()
    rendered = subprocess.run(
        [sys.executable, "-c", "from eliottree._cli import main; main()", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "wa_trio:job/1 ⇒ started" in rendered
    assert "wa_trio:job:validate/2/1 ⇒ started" in rendered
    assert "wa_trio:job:acked" in rendered
    assert "succeeded" in rendered


def test_whatsmeow_log_lines_reach_eliot_with_numbers_masked() -> None:
    import logging

    from wa_trio.transport.neonize.library import _route_neonize_logs

    _route_neonize_logs()
    seen: list[dict[str, object]] = []
    eliot.add_destinations(seen.append)
    try:
        logging.getLogger("whatsmeow").warning("retry receipt for 5511999999999@s.whatsapp.net")
        logging.getLogger("whatsmeow").info("below the level: dropped")
    finally:
        eliot.remove_destination(seen.append)
    lines = [m for m in seen if m.get("message_type") == "wa_trio:whatsmeow"]
    assert [m["text"] for m in lines] == ["retry receipt for +55*******9999@s.whatsapp.net"]
    assert lines[0]["level"] == "warning"
