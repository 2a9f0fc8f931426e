"""The only python-magic importer: the real type of media bytes, from the bytes.

libmagic (through python-magic, which neonize already depends on and the image installs as
``libmagic1``) reads the magic numbers and structure of ~2,000 formats; a URL's extension or a
server's Content-Type are never trusted for this (docs/decisions.md). Blocking (a few
microseconds for the first 2 KB): called from a worker thread.
"""

from __future__ import annotations

import magic

HEAD = 8192  # libmagic needs only the start of the file


def mime_of(data: bytes) -> str:
    return str(magic.from_buffer(data[:HEAD], mime=True)).lower()


__all__ = ["mime_of"]
