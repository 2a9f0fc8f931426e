"""Media messages for neonize, built from our prepared payload (``media/prepare.py``).

Images and documents go through neonize's own builders (``client.py``
``NewClient.build_image_message`` / ``build_document_message``: Pillow thumbnail, no ffmpeg).
Audio, voice notes, stickers and videos are built here around neonize's ``upload`` (what its
builders do after their ffmpeg step), because those builders (issue 27, item 8):

- run ``neonize/utils/ffmpeg.py`` ``FFmpeg.call``, which reads stdout to its end before stderr:
  a noisy input fills the stderr pipe and both sides wait for ever;
- take the MIME type from their own ``magic.from_buffer`` re-sniff (a voice note becomes
  ``audio/ogg``, not ``audio/ogg; codecs=opus``; an M4A ``audio/x-m4a``);
- send stickers as they come (``build_sticker_message`` keeps an image's own size; a 600x300
  PNG is not a 512x512 sticker).

Our bytes always: never a URL, which neonize would fetch itself past our limits and guard. Built
without a caption: ``with_caption`` sets each job's.
"""

from __future__ import annotations

from typing import Any

from wa_trio.core.media_rules import MediaPayload

#: our media kinds -> the field of waE2E.Message the builders fill
MEDIA_FIELDS = {
    "image": "imageMessage",
    "video": "videoMessage",
    "audio": "audioMessage",
    "voice": "audioMessage",
    "document": "documentMessage",
    "sticker": "stickerMessage",
}


def _uploaded(upload: Any) -> dict[str, Any]:
    """The fields every media message takes from neonize's ``UploadResponse``."""
    return {
        "URL": upload.url,
        "directPath": upload.DirectPath,
        "fileEncSHA256": upload.FileEncSHA256,
        "fileLength": upload.FileLength,
        "fileSHA256": upload.FileSHA256,
        "mediaKey": upload.MediaKey,
    }


def build_media(client: Any, media: MediaPayload) -> Any:
    """The media message for ``media`` (uploaded once: the caller caches it by content)."""
    # neonize is imported where used: importing any part of it loads the Go library (library.py)
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        AudioMessage,
        Message,
        StickerMessage,
        VideoMessage,
    )
    from neonize.utils.enum import MediaType

    kind, data = media.kind, media.data
    if kind == "image":
        return client.build_image_message(data)
    if kind == "document":
        name = media.filename
        return client.build_document_message(
            data, filename=name, title=name, mimetype=media.mime_type
        )
    if kind in {"audio", "voice"}:
        upload = client.upload(data, MediaType.MediaAudio)
        return Message(
            audioMessage=AudioMessage(
                **_uploaded(upload), seconds=media.seconds, mimetype=media.mime_type,
                PTT=kind == "voice",
            )
        )  # fmt: skip
    if kind == "sticker":
        upload = client.upload(data, MediaType.MediaImage)  # neonize uploads stickers as images
        return Message(
            stickerMessage=StickerMessage(
                **_uploaded(upload), mimetype="image/webp", isAnimated=_animated(data),
                height=512, width=512,
            )
        )  # fmt: skip
    if kind == "video":
        upload = client.upload(data, MediaType.MediaVideo)
        return Message(
            videoMessage=VideoMessage(
                **_uploaded(upload), seconds=media.seconds, mimetype=media.mime_type,
                JPEGThumbnail=media.thumbnail or None,
            )
        )  # fmt: skip
    raise ValueError(kind)


def _animated(webp: bytes) -> bool:
    """A WebP with an animation chunk (RIFF ... WEBP VP8X, the ANIM flag), without decoding."""
    return webp[12:16] == b"VP8X" and bool(webp[20] & 0x02) if len(webp) > 20 else False


def with_caption(message: Any, kind: str, caption: str) -> Any:
    """A copy of a built media message with this job's caption (image, video, document)."""
    copy = type(message)()
    copy.CopyFrom(message)
    if caption and kind in {"image", "video", "document"}:
        getattr(copy, MEDIA_FIELDS[kind]).caption = caption
    return copy


__all__ = ["MEDIA_FIELDS", "build_media", "with_caption"]
