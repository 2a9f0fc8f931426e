"""Media jobs, the pure rules: the ``media`` object's shape, size caps, what the bytes may be,
and which addresses a media URL may reach.

- ``parse_media``: ``kind`` (image, document, video, audio, voice, sticker), exactly one of
  ``url`` (http/https) or ``data`` (base64, capped by WHATSAPP_MEDIA_INLINE_MAX_BYTES), optional
  ``filename`` and ``mime_type``; ``invalid_media`` otherwise.
- ``cap``: WHATSAPP_MEDIA_MAX_BYTES, or WhatsApp's own limit for the kind (``LIMITS``).
- ``check_type``: the type sniffed from the bytes against the kind and a declared ``mime_type``:
  another family or another declared type -> ``media_type_mismatch``; the right family but a
  type WhatsApp does not take for that kind -> ``media_unsupported``.
- ``refusal``: why an address may not be fetched (loopback, private, link-local, metadata,
  multicast, reserved), unless WHATSAPP_MEDIA_ALLOW_PRIVATE=on; checked after DNS and on
  every redirect by ``media_fetch``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import attrs
import idna

KINDS = ("image", "document", "video", "audio", "voice", "sticker")

#: WhatsApp's own limits (bytes), used when WHATSAPP_MEDIA_MAX_BYTES is unset (docs/media.md)
LIMITS: dict[str, int] = {
    "image": 5 * 1024**2,
    "video": 16 * 1024**2,
    "audio": 16 * 1024**2,
    "voice": 16 * 1024**2,
    "document": 100 * 1024**2,
    "sticker": 500 * 1024,
}

#: what WhatsApp takes per kind (sniffed MIME types)
SUPPORTED: dict[str, frozenset[str]] = {
    "image": frozenset({"image/jpeg", "image/png"}),
    "video": frozenset({"video/mp4", "video/3gpp"}),
    "audio": frozenset({"audio/aac", "audio/mp4", "audio/mpeg", "audio/amr", "audio/ogg"}),
    "voice": frozenset({"audio/ogg", "audio/mpeg", "audio/mp4", "audio/aac"}),
    "sticker": frozenset({"image/webp", "image/png"}),
}
_FAMILY = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "voice": "audio",
    "sticker": "image",
}
#: the same type under another name
_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/opus": "audio/ogg",
    "video/x-m4v": "video/mp4",
}
#: a sticker as WhatsApp shows one: a 512x512 WebP of at most 100 KB (still) or 500 KB (animated)
STICKER_SIDE = 512
STICKER_STATIC_MAX = 100 * 1024
STICKER_ANIMATED_MAX = 500 * 1024
#: the MIME type of a WhatsApp voice note (what the phones record and expect)
VOICE_MIME = "audio/ogg; codecs=opus"
#: kinds prepared with ffprobe/ffmpeg (``media/ffmpeg.py``: lengths, thumbnails, voice notes);
#: stickers are scaled with Pillow
NEEDS_FFMPEG = frozenset({"video", "voice", "audio"})


def ffmpeg_kinds(*transports: str) -> frozenset[str]:
    """The kinds the transports' media preparation runs ffmpeg for (``media/prepare.py``):
    neonize needs lengths, thumbnails and voice notes; the Cloud API only voice notes (Meta takes
    OGG/Opus voice notes and reads the rest itself); the dry run prepares nothing."""
    table = {"neonize": NEEDS_FFMPEG, "cloud-api": frozenset({"voice"})}
    return frozenset().union(*(table.get(kind, frozenset()) for kind in transports))


MAX_URL = 2048
MAX_FILENAME = 255
_MIME = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")


class MediaProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class MediaSpec:
    """A job's validated ``media``: where the bytes come from and what they claim to be."""

    kind: str
    url: str | None = None
    data: bytes | None = attrs.field(default=None, repr=False)
    filename: str | None = None
    mime_type: str | None = None


@attrs.frozen
class MediaPayload:
    """The bytes to send, checked (the transports' input)."""

    kind: str
    data: bytes = attrs.field(repr=False)
    mime_type: str
    sha256: str
    filename: str | None = None
    #: length of audio, voice and video (whole seconds, read by ffprobe; 0: not read)
    seconds: int = 0
    #: a video's first frame, JPEG (neonize's video message shows it; empty: none)
    thumbnail: bytes = attrs.field(default=b"", repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def base_mime(self) -> str:
        """The MIME type without its parameters (``audio/ogg`` for a voice note)."""
        return self.mime_type.split(";", 1)[0].strip()

    def converted(self, data: bytes, mime_type: str, **more: Any) -> MediaPayload:
        """The same media as other bytes (a voice note transcoded, a sticker scaled)."""
        digest = hashlib.sha256(data).hexdigest()
        return attrs.evolve(self, data=data, mime_type=mime_type, sha256=digest, **more)


def parse_media(value: Any, *, inline_max: int) -> MediaSpec:
    """Raises: MediaProblem ``invalid_media`` or ``media_too_large`` (inline data)."""
    if not isinstance(value, dict):
        raise MediaProblem("invalid_media", "media must be an object")
    if set(value) - {"kind", "url", "data", "filename", "mime_type"}:
        raise MediaProblem(
            "invalid_media", "media may hold only kind, url, data, filename and mime_type"
        )
    kind = value.get("kind")
    if kind not in KINDS:
        raise MediaProblem("invalid_media", f"media.kind must be one of {', '.join(KINDS)}")
    url, data = value.get("url"), value.get("data")
    if (url is None) == (data is None):
        raise MediaProblem("invalid_media", "media needs exactly one of url or data")
    filename, mime = value.get("filename"), value.get("mime_type")
    if filename is not None and (
        not isinstance(filename, str)
        or not 0 < len(filename) <= MAX_FILENAME
        or any(ch in filename for ch in "/\\\0")
    ):
        raise MediaProblem("invalid_media", "media.filename must be a plain file name")
    if mime is not None and (not isinstance(mime, str) or not _MIME.fullmatch(mime.lower())):
        raise MediaProblem("invalid_media", "media.mime_type must look like type/subtype")
    if url is not None:
        return MediaSpec(kind, url=_url(url), filename=filename, mime_type=_mime(mime))
    return MediaSpec(kind, data=_inline(data, inline_max), filename=filename, mime_type=_mime(mime))


def _url(url: Any) -> str:
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise MediaProblem("invalid_media", f"media.url must be a URL of at most {MAX_URL} chars")
    why = url_problem(url)
    if why is not None:
        raise MediaProblem("invalid_media", f"media.url {why}")
    return url


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
#: C0 controls, DEL, C1 controls, spaces and lone surrogates: httpx refuses them (InvalidURL)
#: and a surrogate cannot even be encoded
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\ud800-\udfff]")


def ascii_host(host: str) -> str | None:
    """``host`` as it goes to DNS (an IP literal, an ASCII name, or a name in IDNA's ASCII
    form), or None when it is no valid host name: an empty or over-long label, a character
    IDNA refuses. Checked before any request (the resolver raised ``UnicodeError`` on these,
    and not as an ``OSError``)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        name = host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched as it is (None: it can be tried): its scheme, its
    characters, its host, credentials in it."""
    if _BAD_URL_CHARS.search(url):
        return "holds a control character, a space or an unpaired surrogate"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "must be http:// or https://"
    if parts.username or parts.password:
        return "must not carry credentials"
    if ascii_host(parts.hostname) is None:
        return "has a host name that is not a valid DNS or IDNA name"
    return None


def _inline(data: Any, inline_max: int) -> bytes:
    if not isinstance(data, str):
        raise MediaProblem("invalid_media", "media.data must be a base64 string")
    if len(data) > (inline_max + 2) * 4 // 3 + 4:
        raise MediaProblem(
            "media_too_large", f"inline media is larger than {inline_max} bytes (use a URL)"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaProblem("invalid_media", "media.data is not valid base64") from None
    if not raw:
        raise MediaProblem("invalid_media", "media.data is empty")
    if len(raw) > inline_max:
        raise MediaProblem(
            "media_too_large", f"inline media is larger than {inline_max} bytes (use a URL)"
        )
    return raw


def _mime(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.lower()
    return _ALIASES.get(lowered, lowered)


def cap(kind: str, max_bytes: int | None) -> int:
    return max_bytes if max_bytes is not None else LIMITS[kind]


def check_type(kind: str, sniffed: str, declared: str | None) -> None:
    """Raises: MediaProblem ``media_type_mismatch`` or ``media_unsupported``."""
    sniffed = _mime(sniffed) or "application/octet-stream"
    if declared is not None and declared != sniffed:
        raise MediaProblem(
            "media_type_mismatch", f"the bytes are {sniffed}, the job says {declared}"
        )
    family = _FAMILY.get(kind)
    if family is not None and sniffed.split("/")[0] != family:
        raise MediaProblem("media_type_mismatch", f"the bytes are {sniffed}, not a {kind}")
    supported = SUPPORTED.get(kind)
    if supported is not None and sniffed not in supported:
        raise MediaProblem(
            "media_unsupported",
            f"WhatsApp does not take {sniffed} as {kind} (takes {', '.join(sorted(supported))})",
        )


def too_many_pixels(pixels: int | None, budget: int) -> str | None:
    """Why an image of ``pixels`` may not go on (None: it may): neonize decodes every image
    whole for its thumbnail, so the pixel count, not the file size, is what costs memory."""
    if pixels is not None and pixels > budget:
        return (
            f"the image has {pixels / 1e6:.1f} million pixels, at most {budget / 1e6:g} million "
            "(WHATSAPP_MEDIA_MAX_PIXELS)"
        )
    return None


def payload(spec: MediaSpec, data: bytes, sniffed: str) -> MediaPayload:
    """The checked bytes (``check_type`` first)."""
    check_type(spec.kind, sniffed, spec.mime_type)
    return MediaPayload(
        spec.kind,
        data,
        _mime(sniffed) or sniffed,
        hashlib.sha256(data).hexdigest(),
        spec.filename,
    )


_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}


def refusal(address: str, *, allow_private: bool) -> str | None:
    """Why ``address`` (an IP) may not be fetched, or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return None
    if ip in _METADATA:
        return "a cloud metadata address"
    for test, what in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_unspecified, "an unspecified address"),
    ):
        if test:
            return what
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    if isinstance(ip, ipaddress.IPv6Address):
        return _tunnelled(ip)
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _tunnelled(ip: ipaddress.IPv6Address) -> str | None:
    """IPv6 forms that carry an IPv4 address (6to4 can wrap 127.0.0.1 or the metadata
    address; Teredo the same) or that are private by another name (site-local ``fec0::/10``)."""
    if ip.is_site_local:
        return "a site-local address"
    if ip.sixtofour is not None:
        return "a 6to4 address (it wraps an IPv4 address)"
    if ip.teredo is not None:
        return "a Teredo address (it wraps an IPv4 address)"
    if ip in _NAT64:
        inner = refusal(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)), allow_private=False)
        return f"a NAT64 address wrapping {inner}" if inner else None
    return None


__all__ = [
    "KINDS",
    "LIMITS",
    "NEEDS_FFMPEG",
    "STICKER_ANIMATED_MAX",
    "STICKER_SIDE",
    "STICKER_STATIC_MAX",
    "SUPPORTED",
    "VOICE_MIME",
    "MediaPayload",
    "MediaProblem",
    "MediaSpec",
    "cap",
    "check_type",
    "ffmpeg_kinds",
    "parse_media",
    "payload",
    "refusal",
]
