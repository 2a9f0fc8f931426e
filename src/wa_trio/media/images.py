"""The only Pillow importer: an image's size in pixels from its header (``pixels_of``: nothing
is decoded, so a decompression bomb costs nothing to measure; neonize's thumbnail step decodes
it all) and a sticker as WhatsApp shows one (``sticker_webp``).

Blocking (Pillow): called from a worker thread.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageSequence

from wa_trio.core.media_rules import (
    STICKER_ANIMATED_MAX,
    STICKER_SIDE,
    STICKER_STATIC_MAX,
    MediaProblem,
)

#: WebP qualities tried in turn until the sticker fits its size limit
QUALITIES = (80, 60, 40, 20)


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


def _square(frame: Image.Image) -> Image.Image:
    """The frame fitted into STICKER_SIDE x STICKER_SIDE (aspect kept, transparent margins)."""
    picture = frame.convert("RGBA")
    picture.thumbnail((STICKER_SIDE, STICKER_SIDE), Image.Resampling.LANCZOS)
    if picture.size != (STICKER_SIDE, STICKER_SIDE) and max(picture.size) < STICKER_SIDE:
        scale = STICKER_SIDE / max(picture.size)  # small pictures grow to fill the side
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (STICKER_SIDE, STICKER_SIDE), (0, 0, 0, 0))
    canvas.paste(
        picture, ((STICKER_SIDE - picture.width) // 2, (STICKER_SIDE - picture.height) // 2)
    )
    return canvas


def sticker_webp(data: bytes) -> bytes:
    """``data`` (PNG or WebP, still or animated) as a 512x512 WebP within WhatsApp's limit
    (100 KB still, 500 KB animated). A WebP already that size and within the limit is kept
    as it is (with any sticker-pack metadata it carries).

    Raises:
        MediaProblem: ``media_unsupported`` (unreadable), ``media_too_large`` (no quality fits).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            animated = getattr(image, "n_frames", 1) > 1
            limit = STICKER_ANIMATED_MAX if animated else STICKER_STATIC_MAX
            if image.format == "WEBP" and image.size == (STICKER_SIDE,) * 2 and len(data) <= limit:
                return data
            frames = [_square(frame) for frame in ImageSequence.Iterator(image)]
            durations = [
                int(frame.info.get("duration", 100)) for frame in ImageSequence.Iterator(image)
            ]
    except Exception as error:  # noqa: BLE001 - any picture Pillow cannot read
        raise MediaProblem(
            "media_unsupported", f"the sticker is not a readable image ({type(error).__name__})"
        ) from None
    for quality in QUALITIES:
        out = io.BytesIO()
        if animated:
            frames[0].save(out, "WEBP", quality=quality, save_all=True, append_images=frames[1:],
                           duration=durations, loop=0)  # fmt: skip
        else:
            frames[0].save(out, "WEBP", quality=quality)
        if out.tell() <= limit:
            return out.getvalue()
    raise MediaProblem(
        "media_too_large", f"the sticker does not fit in {limit // 1024} KB as a 512x512 WebP"
    )


__all__ = ["QUALITIES", "pixels_of", "sticker_webp"]
