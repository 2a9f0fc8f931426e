"""Media and group jobs end to end (issue 14): the real broker, the dry-run transport, and a
media server of the test's own on loopback (WHATSAPP_MEDIA_ALLOW_PRIVATE=on lets the worker
fetch from it; the tests about refusals turn it off)."""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import (
    drain_queue,
    error_code,
    job_body,
    job_metric,
    publish_many,
    sent_records,
    serve_app,
    wait_for,
)
from tests.helpers import (
    failed_count as _failed,
)
from tests.media_samples import BY_KIND, GIF, PNG, b64
from wa_trio.config.settings import Settings
from wa_trio.core.media_rules import VOICE_MIME, refusal
from wa_trio.transport.dry_run import DryRunTransport
from wa_trio.worker.app import Worker


class MediaServer:
    """Serves the samples, and the misbehaviours the worker must survive; counts requests."""

    def __init__(self) -> None:  # noqa: C901 - a flat table of routes (nested handlers)
        self.hits: collections.Counter[str] = collections.Counter()
        self.flaky_left = 1
        self.port = 0
        app = self.app = QuartTrio("media")

        @app.get("/file/<kind>")
        async def file(kind: str) -> Response:
            self.hits[f"file/{kind}"] += 1
            data = BY_KIND[kind][0] if kind in BY_KIND else {"png": PNG, "gif": GIF}[kind]
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if request.headers.get("If-None-Match") == etag:
                return Response(b"", status=304, headers={"ETag": etag})
            # a server's Content-Type is never trusted: this one lies
            return Response(data, content_type="text/plain", headers={"ETag": etag})

        @app.get("/status/<int:code>")
        async def status(code: int) -> Response:
            self.hits[f"status/{code}"] += 1
            return Response(b"", status=code)

        @app.get("/big")
        async def big() -> Response:
            self.hits["big"] += 1
            return Response(PNG + b"\x00" * 5000, content_type="image/png")

        @app.get("/grow")
        async def grow() -> Response:
            self.hits["grow"] += 1

            async def chunks() -> AsyncIterator[bytes]:
                yield PNG
                for _ in range(100):  # no Content-Length: it grows past the cap mid-stream
                    yield b"\x00" * 1000

            return Response(chunks(), content_type="image/png")

        @app.get("/stall")
        async def stall() -> Response:
            self.hits["stall"] += 1
            await trio.sleep(30)
            return Response(PNG)

        @app.get("/flaky")
        async def flaky() -> Response:
            self.hits["flaky"] += 1
            if self.flaky_left > 0:
                self.flaky_left -= 1
                return Response(b"", status=503)
            return Response(PNG)

        @app.get("/redirect/<path:target>")
        async def redirect(target: str) -> Response:
            self.hits["redirect"] += 1
            return Response(b"", status=302, headers={"Location": "/" + target})

        @app.get("/elsewhere")
        async def elsewhere() -> Response:
            self.hits["elsewhere"] += 1
            return Response(
                b"", status=302, headers={"Location": f"http://127.0.0.2:{self.port}/file/png"}
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_app, self.app)
            task_status.started()


async def _start(
    nursery: trio.Nursery,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    **over: str,
) -> tuple[MediaServer, Settings, Worker]:
    server = MediaServer()
    await nursery.start(server.serve)
    env = {
        "WHATSAPP_MEDIA_ALLOW_PRIVATE": "on",
        "WHATSAPP_MEDIA_TIMEOUT": "1s",
        "WHATSAPP_RETRY_DELAYS": "1s",
        **over,
    }
    settings = Settings.from_env(make_env(**env))
    worker = await start_worker(settings)
    return server, settings, worker


def _codes(messages: list[Any]) -> list[str]:
    return sorted(error_code(message) for message in messages)


def _media(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def media_job(n: int, media: dict[str, Any], text: str | None = None, **fields: Any) -> bytes:
    """A media job; ``text`` is its caption (none by default: a bare image)."""
    data = json.loads(job_body(n, media=media, **fields))
    del data["text_message"]
    if text is not None:
        data["text_message"] = text
    return json.dumps(data).encode()


async def test_every_kind_by_url_and_by_data(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    server, settings, worker = await _start(nursery, make_env, start_worker)
    bodies = []
    for kind in sorted(BY_KIND):
        caption = None if kind in {"audio", "voice", "sticker"} else f"{kind} caption"
        name = "receipt.pdf" if kind == "document" else None
        for source in ("url", "data"):
            media = _media(
                kind=kind,
                url=server.url(f"file/{kind}") if source == "url" else None,
                data=b64(BY_KIND[kind][0]) if source == "data" else None,
                filename=name,
            )
            bodies.append(media_job(0, media, caption))
    delete_after(settings)
    await publish_many(settings, bodies)
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 12, what="12 sends")
    records = sent_records(settings.dry_run_file)
    seen = collections.Counter(r["media"]["kind"] for r in records)
    assert seen == {kind: 2 for kind in BY_KIND}
    for record in records:
        kind = record["media"]["kind"]
        data, mime = BY_KIND[kind]
        assert record["media"]["mime_type"] == mime  # sniffed, not the server's text/plain
        assert record["media"]["size"] == len(data)
        assert record["media"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert "data" not in record["media"]  # never the bytes
        if kind == "document":
            assert record["media"]["filename"] == "receipt.pdf"
            assert record["text_message"] == "document caption"
    transport = worker.transport
    assert isinstance(transport, DryRunTransport)
    assert transport.uploads.uploads == 6  # one per content, URL and data alike
    sample = worker.metrics.registry.get_sample_value
    assert sample("whatsapp_media_jobs_total", {"kind": "image"}) == 2
    assert sample("whatsapp_media_fetches_total", {"result": "fetched"}) == 6


async def test_a_group_destination(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    _server, settings, _worker = await _start(nursery, make_env, start_worker)
    delete_after(settings)
    await publish_many(
        settings,
        [
            job_body(1, destination="120363025246125486@g.us", text_message="hello group"),
            job_body(2, destination="12036302524@g.us.evil"),
        ],
    )
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="sent")
    assert sent_records(settings.dry_run_file)[0]["destination"] == "120363025246125486@g.us"
    await wait_for(lambda: _failed(_worker, "invalid_destination") == 1, what="malformed group")


async def test_every_media_failure_has_its_code(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    server, settings, worker = await _start(
        nursery, make_env, start_worker, WHATSAPP_MEDIA_MAX_BYTES="4000"
    )
    cases = {
        "media_not_found": [
            {"kind": "image", "url": server.url("status/404")},
            {"kind": "image", "url": server.url("status/410")},
        ],
        "media_too_large": [
            {"kind": "image", "url": server.url("big")},  # declared too large
            {"kind": "image", "url": server.url("grow")},  # grows past the cap mid-stream
        ],
        "media_type_mismatch": [
            {"kind": "document", "url": server.url("file/png"), "mime_type": "application/pdf"},
        ],
        "media_unsupported": [{"kind": "image", "url": server.url("file/gif")}],
        "media_url_refused": [
            {"kind": "image", "url": server.url("redirect/redirect/redirect/redirect/file/png")}
        ],
        "invalid_media": [{"kind": "image", "url": "gopher://x.test/a"}],
    }
    bodies = [
        job_body(n, media=media) for n, media in enumerate(m for ms in cases.values() for m in ms)
    ]
    delete_after(settings)
    await publish_many(settings, bodies)
    await wait_for(
        lambda: sum(_failed(worker, code) for code in cases) == len(bodies),
        what="every code",
    )
    for code, media in cases.items():
        assert _failed(worker, code) == len(media), code
    dead = await drain_queue(settings, settings.dlq_name)
    assert _codes(dead) == sorted(c for c, ms in cases.items() for _ in ms)
    assert sent_records(settings.dry_run_file) == []
    assert server.hits["grow"] == 1 and server.hits["big"] == 1


async def test_a_stall_and_a_503_are_retried_then_sent(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    server, settings, worker = await _start(nursery, make_env, start_worker)
    delete_after(settings)
    await publish_many(
        settings,
        [
            job_body(1, media={"kind": "image", "url": server.url("flaky")}),
            job_body(2, media={"kind": "image", "url": server.url("stall")}),
        ],
    )
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="flaky sent")
    assert server.hits["flaky"] == 2  # 503, then 200 on the retry
    await wait_for(lambda: _failed(worker, "retries_exhausted") == 1, what="the stall gives up")
    assert _failed(worker, "media_fetch_failed") == 3  # flaky once, the stall twice
    assert server.hits["stall"] == 2  # WHATSAPP_MEDIA_TIMEOUT=1s bounded each
    assert (job_metric(worker, "worker_jobs_retried_total") or 0) == 2


async def test_one_image_to_many_recipients_is_fetched_and_uploaded_once(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    server, settings, worker = await _start(nursery, make_env, start_worker)
    recipients = [f"+55119{n:08d}" for n in range(50)]
    bodies = [
        job_body(n, destination=number, media={"kind": "image", "url": server.url("file/png")})
        for n, number in enumerate(recipients)
    ]
    delete_after(settings)
    await publish_many(settings, bodies)
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 50, what="50 sends")
    assert server.hits["file/png"] == 1
    transport = worker.transport
    assert isinstance(transport, DryRunTransport) and transport.uploads.uploads == 1
    hits = worker.metrics.registry.get_sample_value(
        "whatsapp_media_cache_hits_total", {"layer": "url"}
    )
    assert hits == 49


async def test_private_addresses_are_refused_before_any_request(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    server, settings, worker = await _start(
        nursery, make_env, start_worker, WHATSAPP_MEDIA_ALLOW_PRIVATE="off"
    )
    delete_after(settings)
    await publish_many(
        settings,
        [
            job_body(1, media={"kind": "image", "url": server.url("file/png")}),
            job_body(2, media={"kind": "image", "url": "http://169.254.169.254/latest/x"}),
        ],
    )
    await wait_for(lambda: _failed(worker, "media_url_refused") == 2, what="refused")
    assert sum(server.hits.values()) == 0  # never fetched
    # a redirect is checked again: the first address is allowed here (this test's rule,
    # the real one for everything else), the redirect's private one is not
    worker.media.refusal = lambda address: (
        None if address == "127.0.0.1" else refusal(address, allow_private=False)
    )
    await publish_many(
        settings, [job_body(3, media={"kind": "image", "url": server.url("elsewhere")})]
    )
    await wait_for(lambda: _failed(worker, "media_url_refused") == 3, what="redirect refused")
    assert server.hits["elsewhere"] == 1 and server.hits["file/png"] == 0
    assert sent_records(settings.dry_run_file) == []


async def test_a_revalidation_downloads_nothing_again(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    import wa_trio.media.fetch as media_fetch

    server, settings, worker = await _start(nursery, make_env, start_worker)
    delete_after(settings)
    await publish_many(
        settings, [job_body(1, media={"kind": "image", "url": server.url("file/png")})]
    )
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="first")
    fresh = media_fetch.FRESH_FOR
    media_fetch.FRESH_FOR = 0.0  # as if the fresh window had passed
    try:
        await publish_many(
            settings, [job_body(2, media={"kind": "image", "url": server.url("file/png")})]
        )
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 2, what="second")
    finally:
        media_fetch.FRESH_FOR = fresh
    assert server.hits["file/png"] == 2  # asked again...
    revalidated = worker.metrics.registry.get_sample_value(
        "whatsapp_media_cache_hits_total", {"layer": "revalidated"}
    )
    assert revalidated == 1  # ...answered 304: the bytes came from the cache
    assert (
        worker.metrics.registry.get_sample_value(
            "whatsapp_media_fetches_total", {"result": "fetched"}
        )
        == 1
    )


async def test_the_neonize_worker_sends_media_jobs_from_the_broker(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    """The whole path with the neonize adapter (client double): broker -> fetch -> builder."""
    from neonize.events import ConnectedEv

    from tests.fakes import FakeClient, fake_neonize_transport
    from wa_trio.transport import ConnectionState as S

    server = MediaServer()
    await nursery.start(server.serve)
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_MEDIA_ALLOW_PRIVATE="on")
    )
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    await start_worker(settings, transport=transport)
    delete_after(settings)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
    await publish_many(
        settings,
        [
            media_job(1, {"kind": "voice", "url": server.url("file/voice")}),
            job_body(2, text_message="the photo", media={"kind": "image", "data": b64(PNG)}),
        ],
    )
    await wait_for(lambda: len(clients[0].sent_built) == 2, what="two media sends")
    kinds = sorted(built["kind"] for built in clients[0].built)
    assert kinds == ["MediaAudio", "image"]  # the voice note uploaded as audio
    voice = next(b for b in clients[0].built if b["kind"] == "MediaAudio")
    assert voice["data"] == BY_KIND["voice"][0]  # already OGG/Opus: kept as it is
    note = next(m for _, m in clients[0].sent_built if m.HasField("audioMessage"))
    assert (note.audioMessage.PTT, note.audioMessage.mimetype) == (True, VOICE_MIME)
    assert note.audioMessage.seconds == 1
    image = next(m for _, m in clients[0].sent_built if m.HasField("imageMessage"))
    assert image.imageMessage.caption == "the photo"
