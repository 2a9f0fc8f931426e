"""The only ffmpeg/ffprobe caller: a media file's length and codecs, a voice note in OGG/Opus,
a video's first frame as a JPEG thumbnail.

Each tool runs through ``trio.run_process`` with stdout and stderr both captured (trio reads
the two pipes at once), stdin closed and ``-nostdin``: a noisy input cannot fill an unread
pipe and block the tool, as it can in neonize's helper (``neonize/utils/ffmpeg.py``
``FFmpeg.call`` reads stdout to its end before it reads stderr; issue 27, item 8). The input
is written to a private temporary folder first (MP4 and M4A keep their index at the end, which
a pipe cannot seek to). Every run is bounded by ``TIMEOUT``; a tool that fails or cannot read
the input raises ``MediaProblem`` ``media_unsupported`` (the job is dead-lettered with it).
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio

from wa_trio.core.media_rules import MediaProblem

TIMEOUT = 60.0  # seconds any one ffmpeg or ffprobe run may take
#: WhatsApp's voice notes: Opus in OGG, mono, 48 kHz (what the phones record)
VOICE_ARGS = ("-vn", "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "32k")
THUMBNAIL_SIDE = 200  # px, the longer side of a video's thumbnail (as neonize's builder)


@attrs.frozen
class Probe:
    """What ffprobe says of a file."""

    seconds: float
    container: str  # ffprobe's format_name, e.g. "ogg", "mov,mp4,m4a,3gp,3g2,mj2"
    codecs: tuple[str, ...]  # every stream's codec_name, e.g. ("opus",)

    @property
    def whole_seconds(self) -> int:
        """Rounded (a 1.006 s tone is 1 s); at least 1 for any sound; 0 when unknown."""
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            return 0
        return max(1, round(self.seconds))

    @property
    def is_ogg_opus(self) -> bool:
        return self.container == "ogg" and self.codecs == ("opus",)


async def _run(args: list[str], what: str) -> bytes:
    """The tool's stdout. Both pipes drained by trio; MediaProblem on failure or timeout."""
    try:
        with trio.fail_after(TIMEOUT):
            done = await trio.run_process(
                args, capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL,
                check=False,
            )  # fmt: skip
    except trio.TooSlowError:
        raise MediaProblem("media_unsupported", f"{what} took over {TIMEOUT:g}s") from None
    except OSError as error:  # not installed: the start-up check normally says so first
        raise MediaProblem("media_unsupported", f"{what}: {args[0]} cannot run ({error})") from None
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise MediaProblem("media_unsupported", f"{what} failed: {last[0][:200]}")
    return bytes(done.stdout)


@contextlib.asynccontextmanager
async def _written(data: bytes) -> AsyncIterator[Path]:
    """``data`` as a file in a private temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="wa-trio-media-") as folder:
        path = Path(folder) / "input"
        await trio.to_thread.run_sync(path.write_bytes, data)
        yield path


async def probe(data: bytes) -> Probe:
    """Length and codecs of ``data``."""
    async with _written(data) as path:
        out = await _run(
            ["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
             "-show_streams", str(path)],
            "reading the media",
        )  # fmt: skip
    try:
        info = json.loads(out)
        fmt = info.get("format", {})
        seconds = float(fmt.get("duration", "nan"))
        codecs = tuple(str(s.get("codec_name", "")) for s in info.get("streams", []))
        return Probe(seconds, str(fmt.get("format_name", "")), codecs)
    except (ValueError, AttributeError, TypeError):
        raise MediaProblem("media_unsupported", "ffprobe gave no readable answer") from None


async def voice_note(data: bytes) -> bytes:
    """``data`` (any audio ffmpeg reads: MP3, M4A, AAC, WAV, OGG/Vorbis...) as an OGG/Opus
    voice note."""
    async with _written(data) as path:
        return await _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *VOICE_ARGS, "-f", "ogg",
             "pipe:1"],
            "making the voice note",
        )  # fmt: skip


async def thumbnail(data: bytes) -> bytes:
    """A video's first frame, JPEG, its longer side ``THUMBNAIL_SIDE`` pixels."""
    side = THUMBNAIL_SIDE
    scale = f"scale='if(gt(iw,ih),{side},-2)':'if(gt(iw,ih),-2,{side})'"
    async with _written(data) as path:
        return await _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-frames:v", "1", "-an",
             "-vf", scale, "-f", "mjpeg", "pipe:1"],
            "taking the video's thumbnail",
        )  # fmt: skip


__all__ = ["TIMEOUT", "Probe", "probe", "thumbnail", "voice_note"]
