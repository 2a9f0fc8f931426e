"""The neonize adapter with media and groups (issue 14): each kind reaches neonize's own builder
with our bytes, caption, filename and mime type; the same content is built (uploaded) once;
groups are checked against the account's joined groups. The client double at the client
boundary; everything above it is the real transport."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from neonize.events import ConnectedEv

from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import wait_for
from tests.media_samples import BY_KIND
from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError
from wa_trio.core.media_rules import MediaPayload
from wa_trio.transport import ConnectionState as S
from wa_trio.transport import OutgoingMessage
from wa_trio.transport.neonize import NeonizeTransport
from wa_trio.transport.neonize.media import MEDIA_FIELDS

GROUP = "120363025246125486@g.us"


def payload(kind: str, filename: str | None = None) -> MediaPayload:
    data, mime = BY_KIND[kind]
    return MediaPayload(kind, data, mime, hashlib.sha256(data).hexdigest(), filename)


@pytest.fixture
async def connected(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> AsyncIterator[tuple[NeonizeTransport, FakeClient]]:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_TYPING="off"))
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, groups={GROUP})
    await nursery.start(transport.run)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
    yield transport, clients[0]


#: what reaches the client per kind: neonize's own builder (image, document) or its upload
#: with the media type neonize's builders pass (client.py ``build_audio_message`` etc.)
_REACHES = {
    "image": "image",
    "document": "document",
    "audio": "MediaAudio",
    "voice": "MediaAudio",
    "video": "MediaVideo",
    "sticker": "MediaImage",
}


@pytest.mark.parametrize("kind", sorted(BY_KIND))
async def test_each_kind_reaches_its_builder_with_our_bytes(
    connected: tuple[NeonizeTransport, FakeClient], kind: str
) -> None:
    transport, client = connected
    caption = "" if kind in {"audio", "voice", "sticker"} else "Your receipt"
    media = payload(kind, "receipt.pdf" if kind == "document" else None)
    result = await transport.send(OutgoingMessage("+5511999999999", caption, "u", "k", media=media))
    assert result.message_id.startswith("3EB0")
    [built] = client.built
    assert built["kind"] == _REACHES[kind]
    assert built["data"] == media.data  # our bytes, not a URL
    if kind == "document":
        assert (built["filename"], built["mimetype"]) == ("receipt.pdf", "application/pdf")
    [(to, message)] = client.sent_built
    assert to == "5511999999999@s.whatsapp.net"
    field = getattr(message, MEDIA_FIELDS[kind])
    if caption:
        assert field.caption == caption
    if kind in {"audio", "voice"}:  # our sniffed type, not neonize's re-sniff
        assert (field.PTT, field.mimetype) == (kind == "voice", media.mime_type)
    if kind in {"audio", "voice", "video", "sticker"}:
        assert field.fileLength == len(media.data) and field.URL.startswith("https://mmg.")


async def test_the_same_content_is_uploaded_once_with_each_caption(
    connected: tuple[NeonizeTransport, FakeClient],
) -> None:
    transport, client = connected
    media = payload("image")
    for n in range(5):
        message = OutgoingMessage(f"+55119999900{n:02d}", f"for {n}", "u", f"k{n}", media=media)
        await transport.send(message)
    assert len(client.built) == 1 and transport.uploads.uploads == 1
    captions = [message.imageMessage.caption for _, message in client.sent_built]
    assert captions == [f"for {n}" for n in range(5)]


async def test_a_group_missing_from_a_list_asked_just_now_is_permanent(
    connected: tuple[NeonizeTransport, FakeClient],
) -> None:
    transport, client = connected
    with pytest.raises(SendError) as caught:
        await transport.send(OutgoingMessage("120363000000000001@g.us", "hi", "u", "k1"))
    assert client.group_lookups == 1
    assert (caught.value.code, caught.value.transient) == ("not_in_group", False)


async def test_groups_are_checked_against_the_joined_list(
    connected: tuple[NeonizeTransport, FakeClient],
) -> None:
    transport, client = connected
    await transport.send(OutgoingMessage(GROUP, "hello group", "u", "k1"))
    assert client.sent[-1] == (GROUP.removesuffix("@g.us"), "hello group")
    assert client.lookups == []  # a group skips the number look-up
    with pytest.raises(SendError) as caught:
        await transport.send(OutgoingMessage("120363000000000001@g.us", "hi", "u", "k2"))
    # the list was asked for the job before, not for this one: it may predate a join
    assert (caught.value.code, caught.value.transient) == ("not_in_group", True)
    lookups = client.group_lookups
    with pytest.raises(SendError):  # asked again at most every 30 s, not per job
        await transport.send(OutgoingMessage("120363000000000001@g.us", "hi", "u", "k3"))
    assert client.group_lookups == lookups
    await transport.send(OutgoingMessage(GROUP, "", "u", "k4", media=payload("image")))
    assert client.sent_built[-1][0] == GROUP


async def test_neonize_s_real_client_builds_every_kind_with_only_the_upload_replaced() -> None:
    """neonize's own ``NewClient`` (client.py): ``upload`` and the image and document builders
    run as shipped; only the Go ``Upload`` answers here. Each kind is prepared first as the
    worker does (media/prepare.py: a voice note from MP3, a 600x300 sticker)."""
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import UploadResponse, UploadReturnFunction

    from tests.helpers import require_tool
    from tests.media_samples import MP3
    from wa_trio.core.media_rules import VOICE_MIME
    from wa_trio.media.prepare import Preparer
    from wa_trio.transport.neonize.media import build_media

    require_tool("ffmpeg", how="apt-get install ffmpeg")
    uploads: list[tuple[int, int]] = []

    class Go:
        def Upload(self, _uuid: bytes, data: bytes, size: int, media_type: int) -> bytes:
            uploads.append((size, media_type))
            answer = UploadResponse(
                url="https://mmg.whatsapp.net/x", DirectPath="/v/x", Handle="", MediaKey=b"k",
                FileEncSHA256=b"e", FileSHA256=b"s", FileLength=size,
            )  # fmt: skip
            return bytes(UploadReturnFunction(UploadResponse=answer).SerializeToString())

    client = object.__new__(NewClient)
    client.uuid = b"test"
    client._NewClient__client = Go()
    preparer = Preparer("neonize")
    samples = {**BY_KIND, "voice": (MP3, "audio/mpeg")}
    for kind, (data, mime) in sorted(samples.items()):
        ready = await preparer.prepared(
            MediaPayload(kind, data, mime, hashlib.sha256(data).hexdigest(), "r.pdf")
        )
        message = await trio.to_thread.run_sync(build_media, client, ready)
        field = getattr(message, MEDIA_FIELDS[kind])
        assert (field.fileLength, field.URL) == (len(ready.data), "https://mmg.whatsapp.net/x")
        assert uploads[-1][0] == len(ready.data)
        if kind == "voice":
            assert (field.PTT, field.mimetype, field.seconds) == (True, VOICE_MIME, 1)
        if kind == "audio":
            assert (field.PTT, field.mimetype, field.seconds) == (False, "audio/mpeg", 1)
        if kind == "video":
            assert field.seconds == 1 and field.JPEGThumbnail.startswith(b"\xff\xd8")
        if kind == "sticker":
            assert (field.mimetype, field.width, field.height) == ("image/webp", 512, 512)
        if kind == "document":
            assert (field.fileName, field.mimetype) == ("r.pdf", "application/pdf")
    # the media types neonize's builders use: audio 2, document 3, image 0 (sticker), video 1
    assert [t for _, t in uploads] == [2, 3, 0, 0, 1, 2]
