"""The only python-magic and Pillow importer: the real type of media bytes, from the bytes,
and an image's size in pixels from its header (``pixels_of``: nothing is decoded, so a
decompression bomb costs nothing to measure; neonize's thumbnail step decodes it all).

libmagic (through python-magic, which neonize already depends on and the image installs as
``libmagic1``) reads the magic numbers and structure of ~2,000 formats; a URL's extension or a
server's Content-Type are never trusted for this (docs/decisions.md). Blocking (a few
microseconds for the first 2 KB): called from a worker thread.
"""

from __future__ import annotations

import io
import warnings

import magic
from PIL import Image

HEAD = 8192  # libmagic needs only the start of the file


def mime_of(data: bytes) -> str:
    return str(magic.from_buffer(data[:HEAD], mime=True)).lower()


def pixels_of(data: bytes) -> int | None:
    """Width x height from an image's header (None: not an image Pillow knows). Pillow's own
    bomb guard is off here: the caller compares against WHATSAPP_MEDIA_MAX_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                width, height = image.size
    except Image.DecompressionBombError:  # past twice Pillow's own bound: surely too large
        return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
    except Exception:  # noqa: BLE001 - any unreadable header: "not an image we can measure"
        return None
    return int(width) * int(height)


__all__ = ["mime_of", "pixels_of"]
