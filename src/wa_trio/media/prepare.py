"""Checked media made ready for WhatsApp, once per content (issue 27, item 8):

- ``voice``: an OGG/Opus voice note (``audio/ogg; codecs=opus``, what the phones record and
  play as a voice note); MP3, M4A, AAC and the rest are transcoded by ffmpeg, OGG/Opus is kept;
- ``sticker``: a 512x512 WebP within WhatsApp's limit (100 KB still, 500 KB animated), scaled
  with Pillow (``media/images.py``);
- with neonize, ``audio`` and ``video`` get their length, and ``video`` its thumbnail, from our
  ffprobe/ffmpeg (``media/ffmpeg.py``: both pipes drained), so neonize's own ffmpeg helper, which
  can deadlock on a noisy input, never runs; the MIME type is our sniffed one.

The dry run prepares nothing. The last ``KEEP`` prepared payloads (``KEEP_BYTES`` at most) are
kept by content, so a campaign with one voice note transcodes it once.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from wa_trio.core.media_rules import VOICE_MIME, MediaPayload
from wa_trio.media import ffmpeg
from wa_trio.media.images import sticker_webp

KEEP = 32  # prepared payloads kept by content, at most
KEEP_BYTES = 64 * 1024**2  # and at most this many bytes of them (a video may be 16 MB)


class Preparer:
    def __init__(self, transport: str) -> None:
        self.transport = transport
        self._kept: OrderedDict[tuple[str, str], MediaPayload] = OrderedDict()
        self.runs = 0  # preparations that did work (the tests and the bench count them)

    async def prepared(self, media: MediaPayload) -> MediaPayload:
        """``media`` ready to send (itself when nothing is to be done).

        Raises:
            MediaProblem: ``media_unsupported`` (the tools cannot read it), ``media_too_large``.
        """
        if self.transport == "dry-run" or not self._changes(media.kind):
            return media
        key = (media.sha256, media.kind)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return _named(kept, media.filename)
        ready = await self._prepare(media)
        self.runs += 1
        self._kept[key] = ready
        while len(self._kept) > KEEP or sum(p.size for p in self._kept.values()) > KEEP_BYTES:
            self._kept.popitem(last=False)
        return ready

    def _changes(self, kind: str) -> bool:
        if kind in {"voice", "sticker"}:
            return True
        return self.transport == "neonize" and kind in {"audio", "video"}

    async def _prepare(self, media: MediaPayload) -> MediaPayload:
        if media.kind == "sticker":
            data = await trio.to_thread.run_sync(sticker_webp, media.data)
            return media.converted(data, "image/webp")
        probe = await ffmpeg.probe(media.data)
        if media.kind == "voice":
            data = media.data if probe.is_ogg_opus else await ffmpeg.voice_note(media.data)
            return media.converted(data, VOICE_MIME, seconds=probe.whole_seconds)
        if media.kind == "audio":
            return media.converted(media.data, media.mime_type, seconds=probe.whole_seconds)
        thumbnail = await ffmpeg.thumbnail(media.data)
        return media.converted(
            media.data, media.mime_type, seconds=probe.whole_seconds, thumbnail=thumbnail
        )


def _named(media: MediaPayload, filename: str | None) -> MediaPayload:
    """A kept payload under this job's file name."""
    if media.filename == filename:
        return media
    return media.converted(media.data, media.mime_type, filename=filename)


__all__ = ["KEEP", "KEEP_BYTES", "Preparer"]
