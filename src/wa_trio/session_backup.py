"""Session backup: copy WHATSAPP_SESSION_PATH/whatsapp.db out and back in.

Uses SQLite's online backup API, which takes a consistent snapshot even while the worker (or
whatsmeow) writes to the database. The session database is the account's credential: files are
written 0600, and ``import`` refuses to overwrite a session that holds a linked device unless
``force`` is given (stop the worker first: a running worker keeps its own copy in memory).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from wa_trio.errors import WaTrioError
from wa_trio.files import private_dir


class SessionError(WaTrioError):
    code = "session_error"


def _backup(source: Path, target: Path) -> int:
    """Copy ``source`` into ``target`` (created 0600); return the number of tables copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    target.chmod(0o600)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.commit()
            (status,) = dst.execute("PRAGMA integrity_check").fetchone()
            if status != "ok":
                raise SessionError(f"the copy failed SQLite's integrity check: {status}")
            tables = dst.execute("SELECT count(*) FROM sqlite_master WHERE type='table'")
            return int(tables.fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()


def has_linked_device(database: Path) -> bool:
    """True when ``database`` holds a whatsmeow device row (a linked account) or any data."""
    if not database.exists() or database.stat().st_size == 0:
        return False
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "whatsmeow_device" in names:
            return bool(db.execute("SELECT count(*) FROM whatsmeow_device").fetchone()[0])
        return bool(names)
    finally:
        db.close()


def export_session(session_db: Path, target: Path, *, force: bool = False) -> int:
    if not session_db.exists() or session_db.stat().st_size == 0:
        raise SessionError(f"no session at {session_db}: nothing to export")
    if target.exists() and not force:
        raise SessionError(f"{target} exists; pass --force to overwrite it")
    if target.exists():
        target.unlink()
    return _backup(session_db, target)


def _linked_source(source: Path) -> None:
    """Refuse a file that is not a SQLite database holding a linked whatsmeow device."""
    try:
        db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            devices = (
                int(db.execute("SELECT count(*) FROM whatsmeow_device").fetchone()[0])
                if "whatsmeow_device" in names
                else 0
            )
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise SessionError(f"{source} is not a SQLite session database ({error})") from None
    if not devices:
        raise SessionError(f"{source} holds no linked WhatsApp device; nothing to import")


def import_session(source: Path, session_db: Path, *, force: bool = False) -> int:
    """Restore ``source`` as the session: validated first, copied into a temporary file next
    to the session, then renamed over it, so a bad file never costs the linked session."""
    if not source.exists():
        raise SessionError(f"{source} does not exist")
    _linked_source(source)
    if has_linked_device(session_db) and not force:
        raise SessionError(
            f"{session_db} already holds a session; refusing to overwrite it. Stop the worker, "
            "export it first if you need it, then pass --force"
        )
    private_dir(session_db.parent)
    staging = session_db.with_name(f".{session_db.name}.import")
    for leftover in (staging, Path(f"{staging}-journal")):
        leftover.unlink(missing_ok=True)
    tables = _backup(source, staging)
    for stale in (Path(f"{session_db}-wal"), Path(f"{session_db}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(staging, session_db)
    return tables
