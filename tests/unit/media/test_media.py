"""Media jobs, the pure and the store parts (issue 14): the media object, groups, the address
rules, what the bytes may be, the caches, and the ffmpeg check at start-up."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.media_samples import BY_KIND, GIF, JPEG, PDF, PNG, b64
from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.media_rules import LIMITS, MediaProblem, cap, check_type, parse_media, refusal
from wa_trio.media.cache import MAX_AGE, MediaCache
from wa_trio.media.sniff import mime_of
from wa_trio.transport.upload_cache import UploadCache
from wa_trio.worker.startup import check_media_tools

USER = "6f1c6a5e-4a3b-4c2d-9e8f-7a6b5c4d3e2f"


def job(**fields: Any) -> bytes:
    return json.dumps({"user_id": USER, "destination": "+5511999999999", **fields}).encode()


@pytest.mark.parametrize(
    ("media", "code"),
    [
        ("an image", "invalid_media"),
        ({"kind": "gif", "url": "https://x.test/a"}, "invalid_media"),
        ({"kind": "image"}, "invalid_media"),
        ({"kind": "image", "url": "https://x.test/a", "data": b64(PNG)}, "invalid_media"),
        ({"kind": "image", "url": "ftp://x.test/a"}, "invalid_media"),
        ({"kind": "image", "url": "https://user:pw@x.test/a"}, "invalid_media"),
        ({"kind": "image", "url": "https://x.test:99999/a"}, "invalid_media"),
        ({"kind": "image", "url": "https://x.test/" + "a" * 3000}, "invalid_media"),
        ({"kind": "image", "data": "not base64!"}, "invalid_media"),
        ({"kind": "image", "data": ""}, "invalid_media"),
        ({"kind": "image", "data": b64(PNG), "filename": "../etc/passwd"}, "invalid_media"),
        ({"kind": "image", "data": b64(PNG), "mime_type": "png"}, "invalid_media"),
        ({"kind": "image", "data": b64(PNG), "extra": 1}, "invalid_media"),
        ({"kind": "image", "data": b64(b"x" * 2000)}, "media_too_large"),
    ],
)
def test_the_media_object_is_checked_at_the_boundary(media: Any, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_envelope(job(media=media), media_inline_max=1000)
    assert caught.value.code == code


def test_media_jobs_and_captions() -> None:
    bare = parse_envelope(job(media={"kind": "image", "data": b64(PNG)}))
    assert bare.media is not None and bare.media.data == PNG and bare.text_message == ""
    captioned = parse_envelope(
        job(text_message="Your receipt", media={"kind": "document", "url": "https://x.test/r.pdf"})
    )
    assert captioned.text_message == "Your receipt" and captioned.media is not None
    assert captioned.media.url == "https://x.test/r.pdf"
    with pytest.raises(ValidationError) as no_caption:
        parse_envelope(job(text_message="hi", media={"kind": "voice", "data": b64(PNG)}))
    assert no_caption.value.code == "invalid_media"
    with pytest.raises(ValidationError) as missing:
        parse_envelope(job())  # without media, text_message stays required
    assert missing.value.code == "missing_field"
    aliased = parse_media(
        {"kind": "image", "data": b64(JPEG), "mime_type": "image/JPG"}, inline_max=10**6
    )
    assert aliased.mime_type == "image/jpeg"


@pytest.mark.parametrize(
    ("destination", "ok"),
    [
        ("120363025246125486@g.us", True),
        ("5511999999999-1611111111@g.us", True),
        ("abc@g.us", False),
        ("120363025246125486@s.whatsapp.net", False),
        ("@g.us", False),
        ("1234@g.us", False),
    ],
)
def test_group_destinations(destination: str, ok: bool) -> None:
    body = job(destination=destination, text_message="hello group")
    if ok:
        envelope = parse_envelope(body)
        assert envelope.destination == destination and envelope.group
    else:
        with pytest.raises(ValidationError) as caught:
            parse_envelope(body)
        assert caught.value.code == "invalid_destination"


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("192.168.0.10", "a private address"),
        ("172.16.5.4", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "a private address"),
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_which_addresses_a_media_url_may_reach(address: str, refused: str | None) -> None:
    assert refusal(address, allow_private=False) == refused
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize(
    ("kind", "data", "declared", "code"),
    [
        ("image", PNG, None, None),
        ("image", PNG, "image/png", None),
        ("image", PNG, "application/pdf", "media_type_mismatch"),  # a PNG announced as a PDF
        ("document", PNG, "application/pdf", "media_type_mismatch"),
        ("image", PDF, None, "media_type_mismatch"),
        ("image", GIF, None, "media_unsupported"),
        ("document", PDF, "application/pdf", None),
        ("document", PNG, None, None),
        ("sticker", PNG, None, None),
        ("voice", BY_KIND["voice"][0], None, None),
        ("video", PNG, None, "media_type_mismatch"),
    ],
)
def test_the_bytes_decide_the_type(
    kind: str, data: bytes, declared: str | None, code: str | None
) -> None:
    sniffed = mime_of(data)
    if code is None:
        check_type(kind, sniffed, declared)
    else:
        with pytest.raises(MediaProblem) as caught:
            check_type(kind, sniffed, declared)
        assert caught.value.code == code


def test_every_sample_sniffs_as_its_type() -> None:
    for data, expected in BY_KIND.values():
        assert mime_of(data) == expected


def test_caps_follow_whatsapp_or_the_operator() -> None:
    assert cap("image", None) == LIMITS["image"] == 5 * 1024**2
    assert cap("sticker", None) == 500 * 1024
    assert cap("document", 16_000_000) == 16_000_000


def test_media_settings(make_env: Callable[..., dict[str, str]]) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_MEDIA_MAX_BYTES="16MB"))
    assert settings.media_max_bytes == 16_000_000
    assert settings.media_inline_max_bytes == 1_000_000
    assert settings.media_cache_bytes == 256_000_000
    assert Settings.from_env(make_env()).media_max_bytes is None
    for variable, value in (
        ("WHATSAPP_MEDIA_MAX_BYTES", "huge"),
        ("WHATSAPP_MEDIA_KINDS", "image,gif"),
        ("WHATSAPP_MEDIA_INLINE_MAX_BYTES", "0"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(make_env(**{variable: value}))
        assert variable in str(caught.value)


def test_the_media_cache_is_bounded_in_bytes_and_time(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "media", max_bytes=250)
    cache.store("https://a.test/1", "h1", b"1" * 100, etag='"e1"', now=1000.0)
    cache.store("https://a.test/2", "h2", b"2" * 100, now=1001.0)
    entry = cache.entry("https://a.test/1")
    assert entry is not None and entry.etag == '"e1"' and entry.sha256 == "h1"
    assert cache.read("h1", now=1002.0) == b"1" * 100  # used: now the newest
    cache.store("https://a.test/3", "h3", b"3" * 100, now=1003.0)  # 300 > 250: h2 goes
    assert cache.entry("https://a.test/2") is None and not (tmp_path / "media" / "h2").exists()
    assert cache.size() == 200
    assert cache.prune(now=1003.0 + MAX_AGE + 1) == 2
    assert cache.size() == 0
    assert oct((tmp_path / "media").stat().st_mode & 0o777) == "0o700"
    cache.close()


def test_the_upload_cache() -> None:
    uploads: UploadCache[str] = UploadCache(size=2, ttl=10.0)
    key = ("sha", "image", None)
    assert uploads.get(key, 0.0) is None
    uploads.put(key, "media-1", 0.0)
    assert uploads.get(key, 5.0) == "media-1"
    assert uploads.get(key, 11.0) is None  # expired
    uploads.put(("a", "image", None), "a", 0.0)
    uploads.put(("b", "image", None), "b", 0.0)
    uploads.put(("c", "image", None), "c", 0.0)
    assert uploads.get(("a", "image", None), 1.0) is None  # least recently used went
    assert (uploads.uploads, uploads.hits) == (4, 1)


def _cloud_env() -> dict[str, str]:
    return {
        "WHATSAPP_TRANSPORT": "cloud-api",
        "WHATSAPP_CLOUD_PHONE_NUMBER_ID": "106540352242922",
        "WHATSAPP_CLOUD_ACCESS_TOKEN": "EAAtoken",
        "WHATSAPP_CLOUD_APP_SECRET": "app-secret",
        "WHATSAPP_CLOUD_VERIFY_TOKEN": "verify-token",
    }


def test_without_ffmpeg_the_media_kinds_that_need_it_are_off_and_said_once(
    make_env: Callable[..., dict[str, str]],
) -> None:
    import io

    neonize = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    said = io.StringIO()
    running = check_media_tools(neonize, which=lambda _tool: None, out=said)
    assert running.media_kinds == ("image", "document", "sticker")  # stickers: Pillow
    line = said.getvalue()
    assert line.count("\n") == 1 and "ffmpeg and ffprobe not found" in line
    assert "audio, video, voice are off" in line
    text_only = attrs.evolve(neonize, media_kinds=("image", "document"))
    quiet = io.StringIO()
    assert check_media_tools(text_only, which=lambda _t: None, out=quiet) == text_only
    cloud = Settings.from_env(make_env(**_cloud_env()))
    assert check_media_tools(cloud, which=lambda _t: None, out=quiet).media_kinds == (
        "image", "document", "video", "audio", "sticker"
    )  # fmt: skip
    dry_run = Settings.from_env(make_env())
    assert check_media_tools(dry_run, which=lambda _tool: None, out=quiet) == dry_run
    assert check_media_tools(neonize, which=lambda tool: f"/usr/bin/{tool}", out=quiet) == neonize
    assert quiet.getvalue().count("voice are off") == 1  # the Cloud API's only ffmpeg kind


def test_the_published_schema_takes_media_and_group_jobs() -> None:
    import jsonschema

    schema = json.loads(
        (
            Path(__file__).resolve().parents[3] / "src" / "wa_trio" / "web" / "job.schema.json"
        ).read_text()
    )
    good = [
        {
            "user_id": USER,
            "destination": "+5511999999999",
            "media": {"kind": "image", "data": b64(PNG)},
        },
        {
            "user_id": USER,
            "destination": "120363025246125486@g.us",
            "text_message": "hello group",
        },
        {
            "user_id": USER,
            "destination": "+5511999999999",
            "text_message": "receipt",
            "media": {"kind": "document", "url": "https://x.test/r.pdf", "filename": "r.pdf"},
        },
    ]
    for job_ in good:
        jsonschema.validate(job_, schema)
        parse_envelope(json.dumps(job_).encode())  # and the worker agrees
    bad = [
        {"user_id": USER, "destination": "+5511999999999", "media": {"kind": "image"}},
        {
            "user_id": USER,
            "destination": "+5511999999999",
            "media": {"kind": "gif", "url": "https://x"},
        },
        {"user_id": USER, "destination": "abc@g.us", "text_message": "x"},
    ]
    for job_ in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(job_, schema)
        with pytest.raises(ValidationError):
            parse_envelope(json.dumps(job_).encode())
