"""Media made ready for WhatsApp (issue 27, item 8): voice notes in OGG/Opus, stickers as
512x512 WebP within the limit, lengths and thumbnails from our own ffmpeg runs with both pipes
drained. Real ffmpeg, ffprobe and Pillow on real samples (tests/media_samples.py)."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest
import trio
from PIL import Image

from tests.helpers import require_tool
from tests.media_samples import M4A, MP3, MP4, OGG, PNG, WEBP
from wa_trio.core.media_rules import (
    STICKER_ANIMATED_MAX,
    STICKER_STATIC_MAX,
    VOICE_MIME,
    MediaPayload,
    MediaProblem,
)
from wa_trio.media import ffmpeg
from wa_trio.media.images import sticker_webp
from wa_trio.media.prepare import Preparer
from wa_trio.media.sniff import mime_of


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ffmpeg", how="apt-get install ffmpeg")
    require_tool("ffprobe", how="apt-get install ffmpeg")


def media(kind: str, data: bytes, mime: str) -> MediaPayload:
    return MediaPayload(kind, data, mime, hashlib.sha256(data).hexdigest())


def _codecs(data: bytes) -> tuple[str, str]:
    """(container, codec) as ffprobe reads them, independently of the code under test."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "-"],
        input=data, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    info = json.loads(out.stdout)
    return info["format"]["format_name"], info["streams"][0]["codec_name"]


@pytest.mark.parametrize(("data", "mime"), [(MP3, "audio/mpeg"), (M4A, "audio/mp4")])
async def test_a_voice_note_in_mp3_or_m4a_becomes_ogg_opus(data: bytes, mime: str) -> None:
    ready = await Preparer("neonize").prepared(media("voice", data, mime))
    assert ready.mime_type == VOICE_MIME and ready.base_mime == "audio/ogg"
    assert _codecs(ready.data) == ("ogg", "opus")
    assert mime_of(ready.data) == "audio/ogg"
    assert ready.seconds == 1  # the 1 s tone
    assert ready.sha256 == hashlib.sha256(ready.data).hexdigest()
    assert ready.sha256 != hashlib.sha256(data).hexdigest()


async def test_an_ogg_opus_voice_note_is_kept_as_it_is() -> None:
    ready = await Preparer("cloud-api").prepared(media("voice", OGG, "audio/ogg"))
    assert (ready.data, ready.mime_type, ready.seconds) == (OGG, VOICE_MIME, 1)


async def test_with_neonize_audio_and_video_get_lengths_and_a_thumbnail() -> None:
    preparer = Preparer("neonize")
    audio = await preparer.prepared(media("audio", MP3, "audio/mpeg"))
    assert (audio.data, audio.mime_type, audio.seconds) == (MP3, "audio/mpeg", 1)  # our type
    video = await preparer.prepared(media("video", MP4, "video/mp4"))
    assert video.seconds == 1 and video.data == MP4
    with Image.open(io.BytesIO(video.thumbnail)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == ffmpeg.THUMBNAIL_SIDE
    # the Cloud API reads lengths itself, the dry run prepares nothing
    plain = media("video", MP4, "video/mp4")
    assert await Preparer("cloud-api").prepared(plain) is plain
    untouched = await Preparer("dry-run").prepared(media("voice", MP3, "audio/mpeg"))
    assert untouched.mime_type == "audio/mpeg"


async def test_the_same_content_is_prepared_once() -> None:
    preparer = Preparer("neonize")
    first = await preparer.prepared(media("voice", MP3, "audio/mpeg"))
    again = await preparer.prepared(media("voice", MP3, "audio/mpeg"))
    assert again == first and preparer.runs == 1


async def test_unreadable_audio_is_media_unsupported_not_a_crash() -> None:
    with pytest.raises(MediaProblem) as caught:
        await Preparer("neonize").prepared(media("voice", b"ID3" + b"\x00" * 64, "audio/mpeg"))
    assert caught.value.code == "media_unsupported"


def _square_of(data: bytes) -> tuple[str | None, tuple[int, int], int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.size, getattr(image, "n_frames", 1)


def test_a_sticker_is_scaled_into_512_square_webp() -> None:
    out = sticker_webp(WEBP)  # 600x300
    assert _square_of(out) == ("WEBP", (512, 512), 1) and len(out) <= STICKER_STATIC_MAX
    small = sticker_webp(PNG)  # 1x1 grows to the side
    assert _square_of(small)[:2] == ("WEBP", (512, 512))
    assert sticker_webp(out) == out  # already right: kept, with any sticker-pack metadata


def test_a_noisy_sticker_is_brought_under_the_limit_or_refused() -> None:
    noisy = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    try:
        out = sticker_webp(buffer.getvalue())
    except MediaProblem as problem:
        assert problem.code == "media_too_large"
    else:
        assert len(out) <= STICKER_STATIC_MAX and _square_of(out)[1] == (512, 512)
    with pytest.raises(MediaProblem) as caught:
        sticker_webp(b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40)
    assert caught.value.code == "media_unsupported"


def test_an_animated_sticker_keeps_its_frames() -> None:
    frames = [Image.new("RGBA", (300, 200), (255, 0, 0, 255)), Image.new("RGBA", (300, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=200)
    out = sticker_webp(buffer.getvalue())
    assert _square_of(out) == ("WEBP", (512, 512), 2) and len(out) <= STICKER_ANIMATED_MAX
    assert out[12:16] == b"VP8X" and out[20] & 0x02  # the animation flag neonize's field reads


_NOISY = "import sys; sys.stderr.write('warning: noisy input\\n' * 20000); print('done')"


async def test_a_tool_that_writes_much_to_stderr_does_not_block() -> None:
    """1.2 MB on stderr (a pipe holds 64 KB): trio drains both pipes, so the tool finishes."""
    assert await ffmpeg._run([sys.executable, "-c", _NOISY], "noisy") == b"done\n"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_neonize_s_own_helper_blocks_on_the_same_tool() -> None:
    """neonize/utils/ffmpeg.py ``FFmpeg.call`` reads stdout to its end before stderr: the same
    tool blocks writing stderr and never ends; here ``timeout`` kills it after 3 s and the
    helper fails (exit 124) - the ffmpeg runs neonize's builders make would hang there."""
    from neonize.utils.ffmpeg import FFmpeg

    timeout = require_tool("timeout", how="coreutils")
    helper = object.__new__(FFmpeg)
    with pytest.raises(RuntimeError, match="Return code: 124") as caught:
        await trio.to_thread.run_sync(helper.call, [timeout, "3", sys.executable, "-c", _NOISY])
    # the helper leaves its pipes open (its frame, kept by the traceback, holds them): let go
    # of them here, under this test's filter
    caught.value.__traceback__ = None
    del caught
    gc.collect()
