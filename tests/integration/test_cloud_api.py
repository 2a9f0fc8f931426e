"""The Cloud API transport end to end: the real broker, a fake Graph API of the test's own on
loopback, Meta's webhooks into the worker's HTTP server (issue 17)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import httpx
import pytest
import trio

from tests.conftest import StartWorker, closed_port
from tests.fake_graph import NUMBER_ID, TOKEN, Answer, FakeGraph, dump
from tests.helpers import (
    EventTap,
    delete_topology,
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    stop_worker,
    wait_for,
)
from tests.helpers import (
    error_code as _code,
)
from tests.helpers import (
    sample as _sample,
)
from wa_trio import http_client
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState
from wa_trio.transport.cloud_api import CloudApiTransport
from wa_trio.transport.cloud_api.webhook import MAX_BODY, SIGNATURE_HEADER, signature
from wa_trio.worker.app import Worker

APP_SECRET = "meta-app-secret-0123456789"
VERIFY = "verify-token-0123456789"
ADMIN = "operator-token-0123456789"


class _Graph(Protocol):
    """A fake Graph API, here or in a process of its own: where it answers."""

    @property
    def base_url(self) -> str: ...


def _settings(make_env: Callable[..., dict[str, str]], graph: _Graph, **over: str) -> Settings:
    return Settings.from_env(
        make_env(
            WHATSAPP_TRANSPORT="cloud-api",
            WHATSAPP_CLOUD_API_URL=graph.base_url,
            WHATSAPP_CLOUD_PHONE_NUMBER_ID=NUMBER_ID,
            WHATSAPP_CLOUD_ACCESS_TOKEN=TOKEN,
            WHATSAPP_CLOUD_APP_SECRET=APP_SECRET,
            WHATSAPP_CLOUD_VERIFY_TOKEN=VERIFY,
            WHATSAPP_ADMIN_TOKEN=ADMIN,
            **over,
        )
    )


async def _stop_then_delete(
    worker: Worker, settings: Settings, extra_queues: list[str] | None = None
) -> None:
    """Stop the worker first: a queue deleted under a running consumer makes it reconnect and
    declare its topology again (retry and wait queues left behind on the shared broker)."""
    try:
        with trio.move_on_after(15):
            await stop_worker(worker)
    finally:
        await delete_topology(settings, extra_queues or [])


def notification(statuses: list[dict[str, Any]], messages: int = 0) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp", "statuses": statuses}
    if messages:
        value["messages"] = [
            {"from": "5511988887777", "id": f"wamid.in{n}", "type": "text", "text": {"body": "oi"}}
            for n in range(messages)
        ]
    return meta_body(value)


def meta_body(value: dict[str, Any]) -> dict[str, Any]:
    """Meta's notification around one ``messages`` change ``value``."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA-ID", "changes": [{"field": "messages", "value": value}]}],
    }


async def post_signed(base_url: str, body: bytes) -> int:
    """POST ``body`` to the worker's Meta webhook, signed with the app secret; the status."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        answer = await http.post(
            "/webhooks/whatsapp",
            content=body,
            headers={SIGNATURE_HEADER: signature(APP_SECRET, body)},
        )
    return answer.status_code


async def _start(
    nursery: trio.Nursery,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    answers: list[Answer] | None = None,
    *,
    timeout: float | None = None,
    **over: str,
) -> tuple[FakeGraph, Settings, Worker]:
    graph = FakeGraph(answers)
    await nursery.start(graph.serve)
    settings = _settings(make_env, graph, **over)
    transport = None
    if timeout is not None:
        transport = CloudApiTransport(settings, Redactor(True), timeout=timeout)
    worker = await start_worker(settings, transport=transport)
    await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="connected")
    return graph, settings, worker


async def test_a_text_job_is_sent_and_its_statuses_come_back_by_webhook(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    graph, settings, worker = await _start(nursery, make_env, start_worker)
    tap = EventTap(settings)
    await tap.bind()
    try:
        assert worker.transport.login_status().linked_as == "+15550100000"
        await publish_many(settings, [job_body(1, text_message="Seu código: 123456")], ["c-1"])
        await wait_for(lambda: len(graph.accepted) == 1, what="Meta took it")
        assert graph.sends[0]["to"] == "5511999999999"
        assert graph.sends[0]["text"] == {"body": "Seu código: 123456", "preview_url": False}
        await wait_for(lambda: tap.at_least(1), what="the sent event")
        assert tap.events[0]["status"] == "sent"
        assert tap.events[0]["whatsapp_message_id"] == "wamid.1"
        body = dump(
            notification(
                [
                    {"id": "wamid.1", "status": "sent", "timestamp": "1764111110"},
                    {"id": "wamid.1", "status": "delivered", "timestamp": "1764111111"},
                    {"id": "wamid.1", "status": "read", "timestamp": "1764111112"},
                    {"id": "wamid.unknown", "status": "delivered", "timestamp": "1764111113"},
                ],
                messages=2,
            )
        )
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            answer = await http.post(
                "/webhooks/whatsapp",
                content=body,
                headers={
                    SIGNATURE_HEADER: signature(APP_SECRET, body),
                    "Content-Type": "application/json",
                },
            )
            assert answer.status_code == 200
            assert (await http.get("/readyz")).status_code == 200
        await wait_for(lambda: tap.at_least(3), what="delivered and read events")
        assert [(e["status"], e["job_key"]) for e in tap.events] == [
            ("sent", "c-1"),
            ("delivered", "c-1"),
            ("read", "c-1"),
        ]
        await wait_for(
            lambda: _sample(worker, "whatsapp_receipts_unmatched_total") == 1, what="unmatched"
        )
        assert _sample(worker, "whatsapp_cloud_webhook_items_total", kind="inbound") == 2
        assert _sample(worker, "whatsapp_cloud_webhook_items_total", kind="status_sent") == 1
        assert job_metric(worker, "worker_jobs_processed_total", status="success") == 1
        assert graph.problems == []
    finally:
        await _stop_then_delete(worker, settings, extra_queues=[tap.queue])


async def test_a_failed_status_after_acceptance_becomes_a_failed_event_with_our_code(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    _graph, settings, worker = await _start(nursery, make_env, start_worker)
    tap = EventTap(settings)
    await tap.bind()
    try:
        await publish_many(settings, [job_body(1)], ["f-1"])
        await wait_for(lambda: tap.at_least(1), what="sent")
        body = dump(
            notification(
                [
                    {
                        "id": "wamid.1",
                        "status": "failed",
                        "timestamp": "1764111111",
                        "errors": [{"code": 131026, "title": "Message undeliverable"}],
                    }
                ]
            )
        )
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            headers = {SIGNATURE_HEADER: signature(APP_SECRET, body)}
            answer = await http.post("/webhooks/whatsapp", content=body, headers=headers)
        assert answer.status_code == 200
        await wait_for(lambda: tap.at_least(2), what="the failed event")
        assert tap.events[1]["status"] == "failed" and tap.events[1]["code"] == "undeliverable"
        assert tap.events[1]["job_key"] == "f-1"
    finally:
        await _stop_then_delete(worker, settings, extra_queues=[tap.queue])


async def test_permanent_meta_errors_are_dead_lettered_with_our_codes(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    answers = [Answer(400, 131047), Answer(400, 131026), Answer(400, 132001), Answer(400, 100)]
    graph, settings, worker = await _start(nursery, make_env, start_worker, answers)
    try:
        await publish_many(settings, [job_body(n) for n in range(4)])
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="failed") == 4,
            what="four dead letters",
        )
        dead = await drain_queue(settings, settings.dlq_name)
        assert sorted(_code(m) for m in dead) == sorted(
            [
                "outside_customer_window",
                "undeliverable",
                "cloud_template_rejected",
                "invalid_parameter",
            ]
        )
        assert len(graph.sends) == 4  # one attempt each: none retried
        assert job_metric(worker, "worker_jobs_retried_total") == 0
    finally:
        await _stop_then_delete(worker, settings)


async def test_rate_limits_and_5xx_are_retried_through_the_ladder_then_sent(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    answers = [Answer(400, 80007), Answer(503, 2), Answer(500, 131000)]  # 130429: in place
    graph, settings, worker = await _start(
        nursery, make_env, start_worker, answers, WHATSAPP_RETRY_DELAYS="1s,1s,1s"
    )
    try:
        await publish_many(settings, [job_body(1)], ["r-1"])
        await wait_for(lambda: len(graph.accepted) == 1, what="sent after three retries")
        assert len(graph.sends) == 4
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="success") == 1,
            what="success",
        )
        assert job_metric(worker, "worker_jobs_retried_total") == 3
        for code in ("cloud_rate_limited", "cloud_api_unavailable"):
            assert (job_metric(worker, "worker_jobs_failed_total", error_type=code) or 0) >= 1
        assert await drain_queue(settings, settings.dlq_name) == []
    finally:
        await _stop_then_delete(worker, settings)


async def test_an_expired_token_stops_the_account_and_health_instead_of_dead_lettering(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    graph, settings, worker = await _start(nursery, make_env, start_worker)
    try:
        graph.token = "the-token-Meta-knows-now"  # ours expired or was revoked
        await publish_many(settings, [job_body(n) for n in range(3)])
        await wait_for(lambda: worker.transport.state is ConnectionState.LOGGED_OUT, what="stopped")
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert "cloud_token_invalid" in health.json()["failing"]["whatsapp"]
            with trio.move_on_after(1.0):  # held: no more attempts, nothing dead-lettered
                await wait_for(lambda: graph.problems.count("bad token") > 2, what="no hammering")
            assert graph.problems.count("bad token") == 1  # the one send that found out
            assert await drain_queue(settings, settings.dlq_name) == []
            assert (job_metric(worker, "worker_jobs_processed_total", status="failed") or 0) == 0
            graph.token = TOKEN  # fixed at Meta (permission restored)
            assert (await http.post("/login/relogin")).status_code == 401
            relogin = await http.post(
                "/login/relogin", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            assert relogin.status_code == 303
            await wait_for(lambda: len(graph.accepted) == 3, what="the held jobs sent")
            assert (await http.get("/healthz")).status_code == 200
        assert job_metric(worker, "worker_jobs_processed_total", status="success") == 3
    finally:
        await _stop_then_delete(worker, settings)


async def test_no_answer_after_the_request_was_written_is_ambiguous(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    graph, settings, worker = await _start(
        nursery,
        make_env,
        start_worker,
        [Answer(200, delay=3.0)],
        timeout=0.5,
        WHATSAPP_AMBIGUOUS="skip",
    )
    try:
        await publish_many(settings, [job_body(1)], ["t-1"])
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="failed") == 1,
            what="dead-lettered, never twice",
        )
        dead = await drain_queue(settings, settings.dlq_name)
        assert [_code(m) for m in dead] == ["send_timed_out"]
        assert len(graph.sends) == 1  # Meta did get it: a retry could have sent it twice
    finally:
        await _stop_then_delete(worker, settings)


class DroppingServer:
    """Answers the number's check, then drops every POST's connection after reading it."""

    def __init__(self) -> None:
        self.posts = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            raw += chunk
        if raw.startswith(b"GET"):
            body = b'{"display_phone_number": "+1 555 0100", "id": "1"}'
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            return
        self.posts += 1
        await stream.aclose()  # the request went out; no answer ever comes


async def test_a_dropped_connection_after_the_request_is_ambiguous(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    server = DroppingServer()
    await nursery.start(server.serve)
    graph = FakeGraph()
    settings = attrs.evolve(
        _settings(make_env, graph, WHATSAPP_AMBIGUOUS="skip"),
        cloud_api_url=f"http://127.0.0.1:{server.port}/v24.0",
    )
    worker = await start_worker(settings)
    try:
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        await publish_many(settings, [job_body(1)])
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="failed") == 1,
            what="dead-lettered",
        )
        dead = await drain_queue(settings, settings.dlq_name)
        assert [_code(m) for m in dead] == ["send_timed_out"] and server.posts == 1
    finally:
        await _stop_then_delete(worker, settings)


async def test_a_request_that_never_left_is_not_ambiguous() -> None:
    async with http_client.client(2.0) as session:
        with pytest.raises(http_client.HttpError) as refused:
            await http_client.call_json(session, "GET", f"http://127.0.0.1:{closed_port()}/x")
    assert refused.value.written is False


async def test_an_unreachable_graph_api_holds_jobs_until_it_answers(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    graph = FakeGraph()
    graph.port = closed_port()
    settings = _settings(make_env, graph)
    worker = await start_worker(settings)
    try:
        await wait_for(
            lambda: worker.transport.state is ConnectionState.DISCONNECTED, what="disconnected"
        )
        await publish_many(settings, [job_body(1)])
        with trio.move_on_after(0.5):
            await wait_for(lambda: False, what="nothing happens")
        assert job_metric(worker, "worker_jobs_processed_total", status="failed") == 0
        assert await drain_queue(settings, settings.dlq_name) == []
    finally:
        await _stop_then_delete(worker, settings)


async def test_a_cloud_template_job_reaches_meta_as_a_template(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    graph, settings, worker = await _start(nursery, make_env, start_worker)
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    job = job_body(
        1,
        cloud_template={"name": "order_shipped", "language": "pt_BR", "components": components},
    )
    bad = job_body(2, cloud_template={"name": "Order Shipped", "language": "pt_BR"})
    try:
        await publish_many(
            settings,
            [
                job.replace(b'"text_message": "job 1", ', b""),
                bad.replace(b'"text_message": "job 2", ', b""),
            ],
        )
        await wait_for(lambda: len(graph.accepted) == 1, what="the template sent")
        assert graph.sends[0]["type"] == "template"
        assert graph.sends[0]["template"] == {
            "name": "order_shipped",
            "language": {"code": "pt_BR"},
            "components": components,
        }
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="invalid") == 1,
            what="the malformed one",
        )
        dead = await drain_queue(settings, settings.dlq_name)
        assert [_code(m) for m in dead] == ["cloud_template_invalid"]
        assert graph.problems == []
    finally:
        await _stop_then_delete(worker, settings)


async def test_the_webhook_routes_check_meta_not_the_operator(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    _graph, settings, worker = await _start(nursery, make_env, start_worker)
    body = dump(notification([{"id": "wamid.x", "status": "delivered", "timestamp": "1"}]))
    good = signature(APP_SECRET, body)
    changed = bytearray(body)
    changed[10] ^= 1

    def result(name: str) -> float:
        return _sample(worker, "whatsapp_cloud_webhook_requests_total", result=name)

    try:
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42"}
            ok = await http.get("/webhooks/whatsapp", params=params)
            assert (ok.status_code, ok.text) == (200, "42")
            wrong = {**params, "hub.verify_token": "not-the-token"}
            assert (await http.get("/webhooks/whatsapp", params=wrong)).status_code == 403
            assert (await http.get("/webhooks/whatsapp")).status_code == 403
            post = "/webhooks/whatsapp"
            assert (await http.post(post, content=body)).status_code == 403
            bad = {SIGNATURE_HEADER: signature("another-secret-01234", body)}
            assert (await http.post(post, content=body, headers=bad)).status_code == 403
            replay = {SIGNATURE_HEADER: good}
            assert (
                await http.post(post, content=bytes(changed), headers=replay)
            ).status_code == 403
            assert (await http.post(post, content=body, headers=replay)).status_code == 200
        huge = b"{" + b" " * MAX_BODY + b"}"
        big = {SIGNATURE_HEADER: signature(APP_SECRET, huge)}
        async with httpx.AsyncClient(base_url=worker.http_url) as http:  # closed after a 413
            # the 413 may come and the server close while the body is still going out
            with contextlib.suppress(httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                assert (await http.post(post, content=huge, headers=big)).status_code == 413
        assert (result("handshake"), result("handshake_refused")) == (1.0, 2.0)
        assert (result("unsigned"), result("bad_signature"), result("too_large")) == (1, 2, 1)
        assert result("accepted") == 1.0
    finally:
        await _stop_then_delete(worker, settings)


async def test_webhook_routes_exist_only_with_the_cloud_api(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)  # dry-run
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        assert (await http.get("/webhooks/whatsapp")).status_code == 404
        assert (await http.post("/webhooks/whatsapp", content=b"{}")).status_code in (404, 405)


async def test_no_test_can_reach_the_real_graph_api(
    make_env: Callable[..., dict[str, str]],
) -> None:
    """The default URL with the test token fails the test before a byte leaves."""
    settings = Settings.from_env(
        make_env(
            WHATSAPP_TRANSPORT="cloud-api",
            WHATSAPP_CLOUD_PHONE_NUMBER_ID=NUMBER_ID,
            WHATSAPP_CLOUD_ACCESS_TOKEN=TOKEN,
            WHATSAPP_CLOUD_APP_SECRET=APP_SECRET,
            WHATSAPP_CLOUD_VERIFY_TOKEN=VERIFY,
        )
    )
    assert "graph.facebook.com" in settings.cloud_api_url
    transport = CloudApiTransport(settings, Redactor(True))
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
    refused = caught.value.subgroup(lambda e: "only loopback" in str(e))
    assert refused is not None and transport.state is not ConnectionState.CONNECTED


async def test_media_is_uploaded_once_and_sent_by_id(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    from tests.media_samples import PDF, PNG, b64

    graph, settings, worker = await _start(nursery, make_env, start_worker)
    image = {"kind": "image", "data": b64(PNG)}
    bodies = [job_body(n, destination=f"+55119000000{n:02d}", media=image) for n in range(3)]
    bodies.append(
        job_body(
            9,
            text_message="Your receipt",
            media={"kind": "document", "data": b64(PDF), "filename": "receipt.pdf"},
        )
    )
    bodies.append(job_body(10, destination="120363025246125486@g.us"))
    try:
        await publish_many(settings, bodies)
        await wait_for(lambda: len(graph.accepted) == 4, what="four media sends")
        assert [u["type"] for u in graph.uploads] == ["image/png", "application/pdf"]
        images = [s for s in graph.sends if s["type"] == "image"]
        assert len(images) == 3 and {s["image"]["id"] for s in images} == {"media-1"}
        assert images[0]["image"]["caption"] == "job 0"
        [document] = [s for s in graph.sends if s["type"] == "document"]
        assert document["document"] == {
            "id": "media-2",
            "caption": "Your receipt",
            "filename": "receipt.pdf",
        }
        await wait_for(
            lambda: (
                job_metric(worker, "worker_jobs_failed_total", error_type="destination_unsupported")
                == 1
            ),
            what="a group is not for the Cloud API",
        )
        assert graph.problems == []
    finally:
        await _stop_then_delete(worker, settings)
