"""Issue 26: no job body and no AMQP property ends the process. Each input below ended the worker
with exit 1 before (each was reproduced on main); now each job ends once, dead-lettered with a
stable code or sent, and a valid job published after all of them is sent by the same worker.

Raw publishes go through pika (``test_hardening.raw_publish``): it writes what our own client
would refuse (bytes that are not UTF-8 in short strings, tables nested 3,000 deep).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import (
    UID,
    EventTap,
    delete_topology,
    drain_queue,
    error_code,
    job_body,
    job_metric,
    publish_many,
    sent_records,
    serve_app,
    wait_for,
)
from tests.integration.test_hardening import raw_publish
from wa_trio.config.settings import Settings
from wa_trio.worker.app import Worker

TEMPLATES = {
    "price.txt": 'Total {{ "%.2f"|format(amount) }}',
    "count.txt": "You have {{ items|length }} items",
    "joined.txt": "{{ names|join(', ') }}",
    "rounded.txt": "{{ value|round }}",
    "short.txt": "{{ note|truncate(5) }}",
    "average.txt": "{{ total / count }}",
    "loop.txt": "{% for i in range(n) %}.{% endfor %}",
    "product.txt": "{{ a * b }}",
}


def _job(**fields: Any) -> dict[str, Any]:
    return {"user_id": UID, "destination": "+5511999999999", **fields}


def _raw(text: str) -> bytes:
    """A JSON body written by hand (``\\ud800`` escapes that json.dumps would not write)."""
    return text.encode()


def _media(url: str) -> bytes:
    return json.dumps(_job(text_message="", media={"kind": "image", "url": url})).encode()


HUGE = "9" * 4000


def bad_bodies(redirect_url: str) -> dict[str, tuple[bytes, str]]:
    """message id -> (body, the code it must be dead-lettered with)."""
    button = {"type": "button", "sub_type": "quick_reply", "index": "²"}
    listed = {"type": ["body"]}
    return {
        "idna-snowman": (_media("http://☃.com/x.png"), "invalid_media"),
        "idna-empty-labels": (_media("http://.../x.png"), "invalid_media"),
        "idna-long-label": (_media(f"http://{'a' * 64}.com/x.png"), "invalid_media"),
        "control-char": (_media("http://1.2.3.4/a\x01b"), "invalid_media"),
        "redirect-to-bad-host": (_media(redirect_url), "media_url_refused"),
        "surrogate-url": (
            _raw(
                f'{{"user_id": "{UID}", "destination": "+5511999999999", "text_message": "", '
                '"media": {"kind": "image", "url": "http://example.com/\\ud800.png"}}'
            ),
            "invalid_encoding",
        ),
        "surrogate-filename": (
            _raw(
                f'{{"user_id": "{UID}", "destination": "+5511999999999", "text_message": "", '
                '"media": {"kind": "document", "url": "http://example.com/a.pdf", '
                '"filename": "a\\ud800.pdf"}}'
            ),
            "invalid_encoding",
        ),
        "surrogate-cloud-template": (
            _raw(
                f'{{"user_id": "{UID}", "destination": "+5511999999999", "cloud_template": '
                '{"name": "hello", "language": "en", "components": [{"type": "body", '
                '"parameters": [{"type": "text", "text": "x\\ud800"}]}]}}'
            ),
            "invalid_encoding",
        ),
        "surrogate-group": (
            _raw(
                f'{{"user_id": "{UID}", "destination": "1203630\\ud800@g.us", '
                '"text_message": "hi"}'
            ),
            "invalid_encoding",
        ),
        "template-index-superscript": (
            json.dumps(
                _job(cloud_template={"name": "hello", "language": "en", "components": [button]})
            ).encode(),
            "cloud_template_invalid",
        ),
        "template-type-list": (
            json.dumps(
                _job(cloud_template={"name": "hello", "language": "en", "components": [listed]})
            ).encode(),
            "cloud_template_invalid",
        ),
        "format-a-string": (_template("price", amount="12.50"), "template_params_invalid"),
        "length-of-int": (_template("count", items=3), "template_params_invalid"),
        "join-an-int": (_template("joined", names=5), "template_params_invalid"),
        "round-a-string": (_template("rounded", value="1.5"), "template_params_invalid"),
        "truncate-an-int": (_template("short", note=123456789), "template_params_invalid"),
        "divide-by-zero": (_template("average", total=10, count=0), "template_params_invalid"),
        "range-over-max": (_template("loop", n=10**9), "template_params_invalid"),
        "huge-product": (
            _raw(
                f'{{"user_id": "{UID}", "destination": "+5511999999999", '
                f'"template": "product", "params": {{"a": {HUGE}, "b": {HUGE}}}}}'
            ),
            "template_params_invalid",
        ),
    }


def _template(name: str, **params: Any) -> bytes:
    return json.dumps(_job(template=name, params=params)).encode()


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


def bad_properties() -> list[tuple[bytes, dict[str, Any]]]:
    """Valid bodies under properties that are not UTF-8 or nested past any sense: each job is
    sent (the bad bytes replaced, the deep table cut), none ends the worker."""
    bad = b"id-\xff\xfe-x"
    cases: list[dict[str, Any]] = [
        {"message_id": bad},
        {"message_id": "p-corr", "correlation_id": bad},
        {"message_id": "p-type", "type": bad},
        {"message_id": "p-ctype", "content_type": bad},
        {"message_id": "p-app", "app_id": bad},
        {"message_id": "p-key", "headers": {b"key-\xff": "v"}},
        {"message_id": "p-deep", "headers": {"deep": _nested(3000)}},
    ]
    return [(job_body(100 + i), props) for i, props in enumerate(cases)]


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    for name, text in TEMPLATES.items():
        (folder / name).write_text(text)
    return folder


class Redirector:
    def __init__(self) -> None:
        self.port = 0
        self.app = QuartTrio("redirector")

        @self.app.get("/away")
        async def away() -> Response:
            # ASCII, as a header must be, and still no host DNS can take (a 64-letter label)
            return Response(b"", status=302, headers={"Location": f"http://{'a' * 64}.com/x"})


@pytest.fixture
def deep_recursion() -> Iterator[None]:
    """pika encodes a nested table recursively: 3,000 levels need more than the default."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    yield
    sys.setrecursionlimit(limit)


def _processed(worker: Worker, status: str) -> float:
    return job_metric(worker, "worker_jobs_processed_total", status=status) or 0.0


async def test_no_job_body_or_property_ends_the_worker(
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    templates_dir: Path,
    deep_recursion: None,
) -> None:
    redirector = Redirector()
    async with trio.open_nursery() as servers:
        redirector.port = await servers.start(serve_app, redirector.app)
        settings = Settings.from_env(
            make_env(
                WHATSAPP_TEMPLATES_DIR=str(templates_dir),
                WHATSAPP_MEDIA_ALLOW_PRIVATE="on",
                WHATSAPP_PREFETCH_COUNT="10",
            )
        )
        bodies = bad_bodies(f"http://127.0.0.1:{redirector.port}/away")
        try:
            worker = await start_worker(settings)
            await publish_many(settings, [])  # the topology exists before pika publishes
            messages = [(body, {"message_id": key}) for key, (body, _) in bodies.items()]
            await trio.to_thread.run_sync(raw_publish, settings, messages + bad_properties())
            await publish_many(settings, [job_body(999)], message_ids=["valid-after"])
            total = len(messages) + len(bad_properties()) + 1

            def settled() -> float:
                return sum(_processed(worker, s) for s in ("success", "invalid", "failed"))

            await wait_for(lambda: settled() >= total, timeout=60, what=f"{total} jobs ended")
            assert worker.pipeline.statistics().connected  # the same worker, still consuming
            letters = await drain_queue(settings, settings.dlq_name)
            codes = {letter.header.message_id: error_code(letter) for letter in letters}
            assert codes == {key: code for key, (_, code) in bodies.items()}
            sent = [record["job_key"] for record in sent_records(settings.dry_run_file)]
            assert "valid-after" in sent
            assert len(sent) == len(bad_properties()) + 1  # every property case was sent
            assert {"p-corr", "p-type", "p-ctype", "p-app", "p-key", "p-deep"} <= set(sent)
            assert any(key.startswith("id-\ufffd") for key in sent)  # bad bytes replaced
        finally:
            await delete_topology(settings)
            servers.cancel_scope.cancel()


async def test_signed_meta_receipts_with_impossible_times_end_no_worker(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    """A receipt at ``nan``, ``inf`` or ``1e14`` s ended the worker in the status task; an
    inbound message with one made the request 500 and dropped the whole notification."""
    from tests.helpers import sample
    from tests.integration.test_cloud_api import (
        APP_SECRET,
        _start,
        _stop_then_delete,
        notification,
    )
    from wa_trio.transport.cloud_api.webhook import SIGNATURE_HEADER, signature

    graph, settings, worker = await _start(nursery, make_env, start_worker)
    tap = EventTap(settings)
    await tap.bind()
    try:
        await publish_many(settings, [job_body(1), job_body(3)], ["m-1", "m-3"])
        await wait_for(lambda: tap.at_least(2), what="the sent events")
        statuses: list[dict[str, Any]] = [
            {"id": "wamid.1", "status": "delivered", "timestamp": "nan"},
            {"id": "wamid.1", "status": "read", "timestamp": float("inf")},
            {"id": "wamid.2", "status": "delivered", "timestamp": 1e14},
        ]
        body = notification(statuses, messages=3)
        messages = body["entry"][0]["changes"][0]["value"]["messages"]
        messages[0]["timestamp"] = "1e14"
        messages[1]["timestamp"] = float("nan")
        raw = json.dumps(body).encode()  # NaN and Infinity as Python writes them
        async with httpx.AsyncClient(base_url=worker.http_url) as http:
            answer = await http.post(
                "/webhooks/whatsapp",
                content=raw,
                headers={SIGNATURE_HEADER: signature(APP_SECRET, raw)},
            )
            assert answer.status_code == 200
        await wait_for(lambda: tap.at_least(5), what="three receipts as events")
        # events of different jobs may arrive in any order (a lane per job)
        later = sorted((event["job_key"], event["status"]) for event in tap.events[2:])
        assert later == [("m-1", "delivered"), ("m-1", "read"), ("m-3", "delivered")]
        assert sample(worker, "whatsapp_cloud_webhook_items_total", kind="inbound") == 3
        await publish_many(settings, [job_body(2)], ["m-2"])
        await wait_for(lambda: len(graph.accepted) == 3, what="the next job is sent")
    finally:
        await _stop_then_delete(worker, settings, extra_queues=[tap.queue])


async def test_a_job_in_hand_at_every_death_is_dead_lettered_not_tried_again(
    delete_after: DeleteAfter, settings: Settings, start_worker: StartWorker
) -> None:
    """A job that killed its worker anyway (an OOM kill, say) is redelivered with its row
    ``sending``; at the third such death it is dead-lettered ``crash_loop`` instead of taking
    the next worker (or replica) down too. Two deaths are simulated in the ledger file a dead
    worker leaves."""
    from wa_trio.stores.ledger import Begin
    from wa_trio.stores.sqlite.ledger import Ledger

    settings.session_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = job_body(1)
    from wa_trio.core.job import body_hash

    ledger = Ledger(settings.ledger_db)
    for _ in range(3):  # the first run's begin, then two redeliveries that died again
        ledger.step([], [Begin("killer", True, body_hash(body))])
    ledger.close()
    delete_after(settings)
    await publish_many(settings, [body], message_ids=["killer"])
    worker = await start_worker(settings)
    await wait_for(lambda: _processed(worker, "failed") == 1, what="dead-lettered")
    [letter] = await drain_queue(settings, settings.dlq_name)
    assert error_code(letter) == "crash_loop"
    assert sent_records(settings.dry_run_file) == []
    row = worker.ledger.ledger.get("killer")
    assert row is not None and row.state == "failed"


async def test_an_image_over_the_pixel_budget_is_refused_before_any_decode(
    topology: Settings, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A 380 KB PNG of 20,000 x 20,000 pixels is within every byte cap; decoded (neonize's
    thumbnail step) it is 400 MB. It is measured from its header and refused."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(buffer, "PNG", optimize=True)
    bomb = base64.b64encode(buffer.getvalue()).decode()
    worker = await start_worker(topology)
    body = json.dumps(_job(text_message="", media={"kind": "image", "data": bomb})).encode()
    await publish_many(topology, [body, job_body(2)], message_ids=["bomb", "after"])
    await wait_for(lambda: _processed(worker, "success") == 1, what="the next job is sent")
    [letter] = await drain_queue(topology, topology.dlq_name)
    assert error_code(letter) == "media_too_large"
    assert "million pixels" in letter.header.headers["x-error-message"].decode()
