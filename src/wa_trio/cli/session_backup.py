"""Session backup: copy an account's WhatsApp session out and back in.

The file is always a SQLite session database (whatsmeow's tables, as ``whatsapp.db``), whatever
the store: so an export from one store imports into the other (SQLite files -> PostgreSQL moves
an account to replicas; back again too).

- SQLite store: SQLite's online backup API, a consistent snapshot even while the worker (or
  whatsmeow) writes to the database.
- PostgreSQL store (``export_account``/``import_account``): whatsmeow creates its own tables on
  the other side (``create_session_store``: one connect through a closed loopback port, so
  WhatsApp is never reached), then the rows are copied, in one transaction on PostgreSQL's side
  (a repeatable-read snapshot when reading).

The session database is the account's credential: files are written 0600, and ``import``
refuses to overwrite a session that holds a linked device unless ``force`` is given, and
refuses while a worker holds the account (stop it first: a running worker keeps its own copy
in memory).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wa_trio.core.errors import WaTrioError
from wa_trio.stores.files import private_dir

if TYPE_CHECKING:
    from wa_trio.config.settings import Settings


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


# ------------------------------------------------------------------------ any store, by account

Tables = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


def export_account(settings: Settings, target: Path, *, force: bool = False) -> int:
    """The account's session (either store) into ``target``, a SQLite session database."""
    if settings.store is None:
        return export_session(settings.session_db, target, force=force)
    from wa_trio.stores.postgres.sessions import device_count, read_session

    account = settings.account_name
    if device_count(settings.store, account) == 0:
        raise SessionError(f"no linked session of account {account} in WHATSAPP_STORE")
    if target.exists() and not force:
        raise SessionError(f"{target} exists; pass --force to overwrite it")
    staging = target.with_name(f".{target.name}.export")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    _create_store(str(staging))
    tables = read_session(settings.store, account)
    _write_sqlite(staging, tables)
    os.replace(staging, target)
    return len(tables)


def import_account(settings: Settings, source: Path, *, force: bool = False) -> int:
    """``source`` (a SQLite session database) as the account's session in its store."""
    if settings.store is None:
        return import_session(source, settings.session_db, force=force)
    from wa_trio.stores import open as stores
    from wa_trio.stores.postgres.sessions import device_count, write_session

    if not source.exists():
        raise SessionError(f"{source} does not exist")
    _linked_source(source)
    account = settings.account_name
    held = f"a running worker holds account {account}; stop it first"
    with stores.claimed(settings, held=held, refuse=SessionError):
        if device_count(settings.store, account) and not force:
            raise SessionError(
                f"account {account} already has a session in WHATSAPP_STORE; refusing to "
                "overwrite it. Export it first if you need it, then pass --force"
            )
        _create_store(stores.session_database(settings))
        return write_session(settings.store, account, _read_sqlite(source))


def _create_store(database: str) -> None:
    """whatsmeow's tables in ``database``, made by whatsmeow (never reaching WhatsApp)."""
    from wa_trio.transport.neonize.library import create_session_store

    with _closed_port() as port:
        create_session_store(database, f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port held bound but not listening: a connection to it is refused at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def _read_sqlite(path: Path) -> Tables:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'whatsmeow%' "
                "AND name != 'whatsmeow_version'"
            )
        ]
        out: Tables = {}
        for name in names:
            cursor = db.execute(f'SELECT * FROM "{name}"')  # noqa: S608 - names from the file's catalog
            columns = [d[0] for d in cursor.description]
            out[name] = (columns, [tuple(row) for row in cursor.fetchall()])
        return out
    finally:
        db.close()


def _write_sqlite(path: Path, tables: Tables) -> None:
    db = sqlite3.connect(path)
    try:
        present = {
            row[0]: {c[1] for c in db.execute(f'PRAGMA table_info("{row[0]}")')}
            for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        }
        with db:
            order = sorted(tables, key=lambda t: (t != "whatsmeow_device", t))
            for table in order:
                if table not in present:
                    continue
                names, rows = tables[table]
                keep = [i for i, n in enumerate(names) if n in present[table]]
                columns = ", ".join(f'"{names[i]}"' for i in keep)
                marks = ", ".join("?" * len(keep))
                db.execute(f'DELETE FROM "{table}"')  # noqa: S608
                db.executemany(
                    f'INSERT INTO "{table}" ({columns}) VALUES ({marks})',  # noqa: S608
                    [tuple(row[i] for i in keep) for row in rows],
                )
    finally:
        db.close()
