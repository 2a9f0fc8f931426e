"""Regressions of the hardening review that need no broker: secrets redacted by structure,
private files, refused folders, the session lock, bounded validation, safe session import."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.helpers import job_body
from wa_trio.cli.main import main
from wa_trio.cli.session_backup import SessionError, import_session
from wa_trio.config.redact import redact_url
from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.destination import possible as _possible_number
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.log import configure_logging, log_file_path
from wa_trio.stores.files import StartupError, lock_session, private_dir
from wa_trio.transport.dry_run import DryRunTransport

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


@pytest.mark.parametrize("password", ["pa/ss", "p#ss", "p?ss", "p@ss", "a/b#c?d@e"])
def test_a_password_that_defeats_url_parsing_is_still_redacted(password: str) -> None:
    url = f"amqp://user:{password}@host:5672/vhost"
    assert password not in redact_url(url)
    assert redact_url(url).startswith("amqp://user:***@")
    for variable in ("RABBITMQ_URL", "WHATSAPP_PROXY"):
        value = url if variable == "RABBITMQ_URL" else f"http://user:{password}@proxy:3128"
        try:
            shown = Settings.from_env({variable: value}).as_redacted_dict()[variable]
        except ConfigError as error:  # unparseable: the one-line error must not leak it
            shown = str(error)
        assert password not in shown


def test_the_admin_token_is_never_shown() -> None:
    token = "s3cret-operator-token"
    shown = Settings.from_env({"WHATSAPP_ADMIN_TOKEN": token}).as_redacted_dict()
    assert shown["WHATSAPP_ADMIN_TOKEN"] == "***"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WHATSAPP_ADMIN_TOKEN": "short tok"})
    assert "short tok" not in str(info.value)


def test_log_file_and_folder_are_private(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"LOG_TO_FILE": "true", "LOG_DIR": str(tmp_path / "logs"), "ENV": "production"}
    )
    handle = configure_logging(settings, io.StringIO())
    handle.close()
    assert stat.S_IMODE(log_file_path(settings).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700


async def test_the_dry_run_file_is_private(tmp_path: Path) -> None:
    from wa_trio.log import Redactor
    from wa_trio.transport import OutgoingMessage

    transport = DryRunTransport(tmp_path / "out" / "sent.jsonl", Redactor(True))
    await transport.send(OutgoingMessage("+5511999999999", "hi", UID, "k"))
    assert stat.S_IMODE((tmp_path / "out" / "sent.jsonl").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    assert transport._file is not None
    transport._file.close()


def test_an_existing_shared_folder_is_refused_not_chmoded(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(StartupError, match="readable by other users"):
        private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # untouched
    created = tmp_path / "new" / "session"
    private_dir(created)
    assert stat.S_IMODE(created.stat().st_mode) == 0o700


def test_every_folder_made_on_the_way_is_private_too(tmp_path: Path) -> None:
    """Issue 30: with several accounts the account's folder is <session>/accounts/<name>;
    ``mkdir(parents=True)`` made the session root and accounts/ 0755, and the opt-out list in
    the root was then refused."""
    account = tmp_path / "session" / "accounts" / "sales"
    private_dir(account)
    for folder in (account, account.parent, account.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    private_dir(account.parent.parent)  # the root, now existing, is accepted as private


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StartupError) as info:
        private_dir(blocker / "session")
    assert "\n" not in str(info.value) and "cannot create" in str(info.value)


def test_a_second_process_on_one_session_folder_is_refused(tmp_path: Path) -> None:
    private_dir(tmp_path / "s")
    first = lock_session(tmp_path / "s")
    try:
        # flock locks are per open file description: a second open stands in for a process
        with pytest.raises(StartupError, match="another wa-trio process"):
            lock_session(tmp_path / "s")
    finally:
        first.close()
    lock_session(tmp_path / "s").close()  # free again once the first is gone


def test_a_padded_destination_is_rejected_before_any_work() -> None:
    before = _possible_number.cache_info().currsize
    body = job_body(destination="+5511999999999" + " " * 400_000)
    with pytest.raises(ValidationError) as info:
        parse_envelope(body)
    assert info.value.code == "invalid_destination"
    assert _possible_number.cache_info().currsize == before


def test_the_cache_keys_on_the_normalised_number() -> None:
    _possible_number.cache_clear()
    for raw in ("+55 11 99999-9999", "+55 (11) 99999.9999", "+5511999999999"):
        parse_envelope(job_body(destination=raw))
    assert _possible_number.cache_info().currsize == 1


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u200b\u200c\u200d \ufeff", "\u2060\n"])
def test_invisible_only_text_is_empty(text: str) -> None:
    import json

    body = json.dumps({"user_id": UID, "text_message": text, "destination": "+5511999999999"})
    with pytest.raises(ValidationError) as info:
        parse_envelope(body.encode())
    assert info.value.code == "empty_text"


def test_visible_text_with_a_zero_width_joiner_is_fine() -> None:
    import json

    body = json.dumps(
        {"user_id": UID, "text_message": "👨\u200d👩 ok", "destination": "+5511999999999"}
    )
    assert parse_envelope(body.encode()).text_message == "👨\u200d👩 ok"


def _session(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY)")
    db.execute("INSERT INTO whatsmeow_device VALUES ('5511999999999@s.whatsapp.net')")
    db.commit()
    db.close()


@pytest.mark.parametrize("content", [b"not a database at all", b""])
def test_a_bad_import_file_leaves_the_linked_session_alone(tmp_path: Path, content: bytes) -> None:
    live = tmp_path / "s" / "whatsapp.db"
    _session(live)
    before = live.read_bytes()
    bad = tmp_path / "bad.db"
    bad.write_bytes(content)
    with pytest.raises(SessionError):
        import_session(bad, live, force=True)
    assert live.read_bytes() == before


def test_an_import_without_a_linked_device_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(SessionError, match="no linked WhatsApp device"):
        import_session(empty, tmp_path / "s" / "whatsapp.db", force=True)


def test_validate_on_a_missing_file_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["validate", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err


def test_a_prefetch_above_65535_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHATSAPP_PREFETCH_COUNT", "70000")
    assert main(["check"]) == 2
    assert "WHATSAPP_PREFETCH_COUNT" in capsys.readouterr().err


def test_a_log_folder_that_cannot_be_made_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LOG_TO_FILE", "true")
    monkeypatch.setenv("LOG_DIR", str(blocker / "logs"))
    monkeypatch.setenv("WHATSAPP_SESSION_PATH", str(tmp_path / "session"))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.path.exists(blocker)


async def test_queue_gauges_read_nan_while_the_broker_is_unreachable() -> None:
    import math

    import trio

    from tests.conftest import closed_port
    from wa_trio.bus.monitor import BrokerMonitor
    from wa_trio.metrics import Metrics

    settings = Settings.from_env({"RABBITMQ_URL": f"amqp://g:g@127.0.0.1:{closed_port()}/"})
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    metrics.queue_depth.labels(settings.queue_name).set(7)  # a count from before the outage
    monitor = BrokerMonitor(settings, metrics)
    with trio.move_on_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            while not math.isnan(
                metrics.registry.get_sample_value(
                    "queue_depth", {"queue_name": settings.queue_name}
                )
                or 0.0
            ):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    depth = metrics.registry.get_sample_value("queue_depth", {"queue_name": settings.queue_name})
    assert depth is not None and math.isnan(depth)


def test_a_broker_failure_racing_a_cancellation_never_escapes_as_a_crash() -> None:
    """A shutdown while the broker goes away: the group (Cancelled + ClosedResourceError) leaves
    the connection as the cancellation alone (it escaped whole and crashed the worker)."""
    import anyio
    import trio

    from wa_trio.bus.amqp import _translate

    cancelled = trio.Cancelled._create()
    group = BaseExceptionGroup("", [cancelled, anyio.ClosedResourceError("channel closed")])
    with pytest.raises(BaseExceptionGroup) as info:
        _translate(group)
    assert all(isinstance(e, trio.Cancelled) for e in info.value.exceptions)
    _translate(ValueError("not ours"))  # anything else: left to the caller to re-raise


def test_ctrl_c_in_a_command_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wa_trio.cli import main as cli

    def interrupted(*_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_send", interrupted)
    assert main(["send", "--destination", "+5511999999999", "--text", "hi", "--wait"]) == 130
    err = capsys.readouterr().err
    assert err == "wa-trio: interrupted\n"
