"""Private files on the session volume: the folder 0700, our SQLite databases 0600 in WAL mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700: it holds credentials."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def open_private_db(path: Path) -> sqlite3.Connection:
    """An autocommit connection usable from any thread (callers serialise with a lock), the file
    0600, journal in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    path.chmod(0o600)
    db.execute("PRAGMA journal_mode=WAL")
    return db
