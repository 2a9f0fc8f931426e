"""Fetched media on disk, by URL and by content hash (sqlite3 + files; blocking: call from a
worker thread).

``<session>/media/<sha256>`` holds the bytes once however many URLs or jobs name them;
``media.db`` maps a URL to its hash and the server's validators (ETag, Last-Modified) so a
later fetch can be a conditional GET (304: nothing downloaded again), and records when each
blob was last used. Bounded in bytes (WHATSAPP_MEDIA_CACHE_BYTES: the least recently used go
first) and in time (``MAX_AGE``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import attrs

from wa_trio.stores.files import open_private_db, private_dir

MAX_AGE = 86400.0  # a blob unused this long is removed


@attrs.frozen
class UrlEntry:
    sha256: str
    etag: str | None
    last_modified: str | None
    fetched_at: float


class MediaCache:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        private_dir(folder)
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = open_private_db(folder / "media.db")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS urls (url TEXT PRIMARY KEY, sha256 TEXT NOT NULL, "
            "etag TEXT, last_modified TEXT, fetched_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, "
            "used_at REAL NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def entry(self, url: str) -> UrlEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT urls.sha256, etag, last_modified, fetched_at FROM urls JOIN blobs "
                "ON blobs.sha256 = urls.sha256 WHERE url = ?",
                (url,),
            ).fetchone()
        return UrlEntry(*row) if row is not None else None

    def read(self, sha256: str, now: float | None = None) -> bytes | None:
        path = self.folder / sha256
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        with self._lock:
            self._db.execute(
                "UPDATE blobs SET used_at = ? WHERE sha256 = ?",
                (time.time() if now is None else now, sha256),
            )
        return data

    def store(
        self,
        url: str | None,
        sha256: str,
        data: bytes,
        etag: str | None = None,
        last_modified: str | None = None,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        path = self.folder / sha256
        if not path.exists():
            partial = path.with_suffix(".part")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            partial.replace(path)
        with self._lock:
            self._db.execute(
                "INSERT INTO blobs VALUES (?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET used_at = "
                "excluded.used_at",
                (sha256, len(data), now),
            )
            if url is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO urls VALUES (?, ?, ?, ?, ?)",
                    (url, sha256, etag, last_modified, now),
                )
        self.prune(now)

    def touch(self, url: str, now: float | None = None) -> None:
        """A 304: the URL's bytes are still right."""
        with self._lock:
            self._db.execute(
                "UPDATE urls SET fetched_at = ? WHERE url = ?",
                (time.time() if now is None else now, url),
            )

    def prune(self, now: float | None = None) -> int:
        """Remove blobs unused for ``MAX_AGE``, then the least recently used over the cap."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, size, used_at FROM blobs ORDER BY used_at DESC"
            ).fetchall()
            total, doomed = 0, []
            for sha256, size, used_at in rows:
                total += size
                if total > self.max_bytes or now - used_at > MAX_AGE:
                    doomed.append(sha256)
            for sha256 in doomed:
                self._db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
                self._db.execute("DELETE FROM urls WHERE sha256 = ?", (sha256,))
        for sha256 in doomed:
            (self.folder / sha256).unlink(missing_ok=True)
        return len(doomed)

    def size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])


__all__ = ["MAX_AGE", "MediaCache", "UrlEntry"]
