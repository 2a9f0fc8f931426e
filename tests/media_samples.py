"""Small media of each type, enough for libmagic to tell what they are (tests only)."""

from __future__ import annotations

import base64

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
OGG = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x13OpusHead" + b"\x00" * 30
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 40
PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n" + b"x" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40
GIF = b"GIF89a" + b"\x00" * 50

#: kind -> (bytes, sniffed type)
BY_KIND = {
    "image": (PNG, "image/png"),
    "video": (MP4, "video/mp4"),
    "audio": (MP3, "audio/mpeg"),
    "voice": (OGG, "audio/ogg"),
    "document": (PDF, "application/pdf"),
    "sticker": (WEBP, "image/webp"),
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
