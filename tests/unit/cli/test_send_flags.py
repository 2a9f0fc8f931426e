"""``wa-trio send`` (issue 30): every field of a job from flags, or the whole body with --json,
validated with the worker's rules before anything is published (nothing here reaches a
broker: each case is refused first, or checked with ``build_body``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from wa_trio.cli.main import main
from wa_trio.cli.parser import parser as build_parser
from wa_trio.cli.send import Refused, build_body


def _body(*argv: str) -> dict[str, object]:
    args = build_parser().parse_args(["send", *argv])
    parsed: dict[str, object] = json.loads(build_body(args))
    return parsed


def test_every_field_from_flags() -> None:
    job = _body(
        "--destination", "+5511999999999", "--template", "otp", "--params", '{"code": "12"}',
        "--language", "pt_BR", "--send-at", "2026-12-24T09:00:00-03:00",
        "--expires-at", "2026-12-24T10:00:00-03:00", "--ttl-seconds", "600", "--account", "sales",
        "--user-id", "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
    )  # fmt: skip
    assert job == {
        "user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
        "destination": "+5511999999999",
        "template": "otp",
        "params": {"code": "12"},
        "language": "pt_BR",
        "send_at": "2026-12-24T09:00:00-03:00",
        "expires_at": "2026-12-24T10:00:00-03:00",
        "ttl_seconds": 600,
        "account": "sales",
    }


def test_media_by_url_with_caption_and_filename() -> None:
    job = _body(
        "--destination", "+5511999999999", "--media", "https://example.com/r.pdf",
        "--kind", "document", "--filename", "report.pdf", "--text", "your report",
    )  # fmt: skip
    assert job["media"] == {
        "kind": "document", "url": "https://example.com/r.pdf", "filename": "report.pdf"
    }  # fmt: skip
    assert job["text_message"] == "your report"


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        ([], "--destination"),
        (["--destination", "+5511999999999"], "--text, --template"),
        (["--destination", "+5511999999999", "--media", "x.png"], "go together"),
        (["--destination", "+5511999999999", "--text", "x", "--params", "{}"], "with --template"),
        (["--destination", "+5511999999999", "--template", "t", "--params", "{"], "not JSON"),
    ],
)
def test_flags_that_make_no_job_are_refused(argv: list[str], why: str) -> None:
    with pytest.raises(Refused, match=why):
        _body(*argv)


def test_a_json_body_from_a_file_or_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = b'{"user_id": "u", "destination": "+5511999999999", "text_message": "hi"}'
    job = tmp_path / "job.json"
    job.write_bytes(raw)
    args = build_parser().parse_args(["send", "--json", str(job)])
    assert build_body(args) == raw
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert build_body(build_parser().parse_args(["send", "--json", "-"])) == raw


def test_an_invalid_json_body_is_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.json"
    job.write_text(
        '{"user_id": "not-a-uuid", "destination": "+5511999999999", "text_message": "x"}'
    )
    assert main(["send", "--json", str(job)]) == 1
    assert "job not published: invalid_user_id" in capsys.readouterr().err


def test_a_past_expiry_or_a_bad_schedule_is_refused_before_publishing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["send", "--destination", "+5511999999999", "--text", "x"]
    assert main([*base, "--send-at", "tomorrow"]) == 1
    assert "invalid_schedule" in capsys.readouterr().err
    assert main([*base, "--ttl-seconds", "0"]) == 1
    assert "invalid_expiry" in capsys.readouterr().err


def test_a_template_without_the_workers_directory_says_how(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WHATSAPP_TEMPLATES_DIR", raising=False)
    assert main(["send", "--destination", "+5511999999999", "--template", "otp"]) == 1
    err = capsys.readouterr().err
    assert "template_not_found" in err and "--no-validate" in err
