"""Session export/import with SQLite's online backup API, while a writer is active."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from wa_trio.cli.main import main
from wa_trio.cli.session_backup import (
    SessionError,
    export_session,
    has_linked_device,
    import_session,
)


def make_session(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY, data BLOB)")
    db.execute("CREATE TABLE whatsmeow_identity_keys (n INTEGER, data BLOB)")
    db.execute("INSERT INTO whatsmeow_device VALUES ('5511999999999@s.whatsapp.net', x'00')")
    db.commit()
    db.close()


def test_export_import_round_trip_while_a_writer_is_active(tmp_path: Path) -> None:
    live = tmp_path / "live" / "whatsapp.db"
    make_session(live)
    stop = threading.Event()
    written = 0

    def writer() -> None:  # whatsmeow keeps writing keys while the worker runs
        nonlocal written
        db = sqlite3.connect(live)
        while not stop.is_set():
            db.execute("INSERT INTO whatsmeow_identity_keys VALUES (?, randomblob(64))", (written,))
            db.commit()
            written += 1
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while written < 200 and time.monotonic() < deadline:  # bounded, no sleep
            time.sleep(0.001)
        assert written >= 200, "the writer did not get going"
        backup = tmp_path / "backup.db"
        assert export_session(live, backup) == 2
    finally:
        stop.set()
        thread.join()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    copy = sqlite3.connect(backup)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = copy.execute("SELECT count(*) FROM whatsmeow_identity_keys").fetchone()[0]
    copy.close()
    assert 200 <= rows <= written  # a consistent snapshot taken during the writes

    target = tmp_path / "other" / "whatsapp.db"
    assert import_session(backup, target) == 2
    assert has_linked_device(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    # a linked session is not overwritten without --force
    with pytest.raises(SessionError, match="refusing to overwrite"):
        import_session(backup, target)
    assert import_session(backup, target, force=True) == 2


def test_export_refuses_missing_session_and_existing_target(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="nothing to export"):
        export_session(tmp_path / "none.db", tmp_path / "out.db")
    live = tmp_path / "whatsapp.db"
    make_session(live)
    (tmp_path / "out.db").write_text("x")
    with pytest.raises(SessionError, match="--force"):
        export_session(live, tmp_path / "out.db")
    assert export_session(live, tmp_path / "out.db", force=True) == 2


def test_cli_session_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_SESSION_PATH", str(tmp_path / "s"))
    make_session(tmp_path / "s" / "whatsapp.db")
    assert main(["session", "export", str(tmp_path / "b.db")]) == 0
    assert main(["session", "import", str(tmp_path / "b.db")]) == 1  # live session: refused
    assert main(["session", "import", str(tmp_path / "b.db"), "--force"]) == 0
    assert os.path.exists(tmp_path / "s" / "whatsapp.db")
