"""Media a transport already handed to WhatsApp, by content (pure: no I/O, no trio).

The same image sent to a thousand recipients is uploaded once: the transports keep what the
upload gave back (neonize: the built message, its media keys and URL; the Cloud API: the media
id) under ``(sha256, kind, filename)`` for ``ttl`` seconds (WhatsApp's media URLs and Meta's
media ids expire), at most ``size`` entries (least recently used out first).
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

Value = TypeVar("Value")
Key = tuple[str, str, str | None]


class UploadCache(Generic[Value]):
    def __init__(self, *, size: int = 256, ttl: float = 86400.0) -> None:
        self._size = size
        self._ttl = ttl
        self._entries: collections.OrderedDict[Key, tuple[float, Value]] = collections.OrderedDict()
        self.uploads = 0  # misses that led to an upload
        self.hits = 0

    def get(self, key: Key, now: float) -> Value | None:
        found = self._entries.get(key)
        if found is None or now - found[0] > self._ttl:
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(self, key: Key, value: Value, now: float) -> None:
        self.uploads += 1
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


__all__ = ["Key", "UploadCache"]
