"""Private files on the session volume: folders 0700, our SQLite databases 0600 in WAL mode,
and the session folder's lock (one worker per session)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import IO

from wa_trio.core.errors import WaTrioError


class StartupError(WaTrioError):
    """The worker cannot start here (a folder, a lock, a port); the message is one line."""

    code = "startup_failed"


def private_dir(path: Path) -> None:
    """Make sure ``path`` is a private folder: create it (and parents) 0700, or accept an
    existing one only when nobody else can read it. An existing folder is never chmod-ed: a
    shared folder given by mistake must be refused, not silently made private.

    Raises:
        StartupError: it cannot be created, or others can read it (one line saying why).
    """
    try:
        _mkdirs_private(path)
    except FileExistsError:
        if not path.is_dir():
            raise StartupError(f"{path} exists and is not a folder") from None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StartupError(
                f"{path} is readable by other users (mode {mode:04o}); it will hold credentials. "
                f"Use a private folder (chmod 700 {path}) or another path"
            ) from None
    except OSError as error:
        raise StartupError(f"cannot create the folder {path}: {error.strerror}") from None


def _mkdirs_private(path: Path) -> None:
    """``mkdir -p`` with every folder it creates 0700 (``Path.mkdir(parents=True)`` makes the
    parents with the umask's mode, 0755 as a rule: with several accounts that was the session
    root itself, issue 30). Raises FileExistsError when ``path`` itself exists."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    if not missing:
        raise FileExistsError(path)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=folder != path)


_OPENING = threading.Lock()  # one database opened at a time in this process


def open_private_db(path: Path) -> sqlite3.Connection:
    """An autocommit connection usable from any thread (callers serialise with a lock), the file
    0600, journal in WAL mode.

    Several connections may open one file at once (the accounts of one process share the
    opt-out list; the CLI edits it beside a worker): switching to WAL needs the file alone for
    a moment and SQLite may answer "locked" at once instead of waiting, so the switch is
    retried (50 ms apart, for at most ``OPEN_WAIT`` seconds) and opens in this process take
    turns."""
    with contextlib.suppress(FileExistsError):  # made meanwhile: as good
        _mkdirs_private(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    with _OPENING:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        deadline = time.monotonic() + OPEN_WAIT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.05)
    return db


OPEN_WAIT = 10.0  # seconds an opening may wait for the file


def open_private_append(path: Path) -> IO[str]:
    """A text file opened for appending, created 0600 (its folder 0700 when we create it)."""
    with contextlib.suppress(FileExistsError):  # made meanwhile: as good
        _mkdirs_private(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def lock_session(path: Path) -> IO[bytes]:
    """Take the session folder's exclusive lock (``.lock``), held while the file stays open.

    Two whatsmeow clients on one device session fight and get the session replaced; a second
    worker on the same folder is refused here with one line (or, with WHATSAPP_STANDBY=on,
    waits for the lock: ``try_lock_session``).

    Raises:
        StartupError: another process holds the lock.
    """
    handle = try_lock_session(path)
    if handle is None:
        raise StartupError(
            f"another wa-trio process uses the session folder {path}; one worker per session "
            "(stop the other, give this one its own WHATSAPP_SESSION_PATH, or run it as the "
            "other's standby: WHATSAPP_STANDBY=on)"
        )
    return handle


def wait_lock_session(path: Path) -> IO[bytes]:
    """The session lock, waiting (blocking: a worker thread) until its holder's process ends;
    the kernel wakes the waiter at once, so a standby takes over without polling."""
    handle = open(path / ".lock", "ab")  # noqa: SIM115 - held open for the worker's life
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    os.chmod(path / ".lock", 0o600)
    return handle


def try_lock_session(path: Path) -> IO[bytes] | None:
    """The session lock, or None when another process holds it. The kernel releases it when
    its holder's process ends, however it ends (kill -9 included): the lease of a standby."""
    handle = open(path / ".lock", "ab")  # noqa: SIM115 - held open for the worker's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    os.chmod(path / ".lock", 0o600)
    return handle


#: where a running worker leaves the address of its HTTP server, in its session folder (the
#: process's root with several accounts), so ``wa-trio accounts`` finds it without being told
#: HTTP_HOST and HTTP_PORT again
HTTP_ADDRESS_FILE = ".http"


def write_http_address(folder: Path, url: str) -> None:
    """Record the worker's HTTP address (0600; replaced atomically)."""
    target = folder / HTTP_ADDRESS_FILE
    temporary = folder / f"{HTTP_ADDRESS_FILE}.new"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(url + "\n")
    temporary.replace(target)


def read_http_address(folder: Path) -> str | None:
    try:
        text = (folder / HTTP_ADDRESS_FILE).read_text().strip()
    except OSError:
        return None
    return text if text.startswith(("http://", "https://")) else None
