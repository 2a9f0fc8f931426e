"""The HTTP send API's boundary driven with arbitrary input (Hypothesis): whatever body, key or
Idempotency-Key a client sends, the answer is one of the API's statuses, never a 500, and an
invalid job is never published. The real routes, validator and SQLite store; the publisher is
an in-memory double (the broker side is covered by tests/integration/test_http_api.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart_trio import QuartTrio

from tests.helpers import job_body
from wa_trio.bus.job_publisher import LivePublisher
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.metrics import Metrics
from wa_trio.stores.sqlite.api_requests import SqliteApiRequests
from wa_trio.web.api import HttpApi, api_routes

KEY = "k" * 24


class MemoryPublisher:
    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def publish(self, body: bytes, message_id: str, headers: Any = None) -> None:
        self.published.append(body)


def _app(tmp: Path) -> tuple[QuartTrio, MemoryPublisher, Callable[[bytes], object]]:
    cfg = Settings.from_env({"WHATSAPP_API_KEYS": f"a:{KEY}", "WHATSAPP_API_RATE": "100000/s"})
    publisher = MemoryPublisher()
    validate = parse_envelope
    store = SqliteApiRequests(tmp / "api.db")
    metrics = Metrics("q", "q.dlq")
    api = HttpApi(cfg, metrics, store, cast(LivePublisher, publisher), validate)
    app = QuartTrio("t")
    api_routes(app, api)
    return app, publisher, validate


JSONS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = (
    st.binary(max_size=300)
    | JSONS.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda extra: job_body(**extra),
        st.dictionaries(
            st.sampled_from(["destination", "text_message", "user_id", "account", "send_at"]),
            st.text(max_size=40),
            max_size=3,
        ),
    )
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=BODIES,
    key=st.sampled_from([KEY, "", "x" * 24]) | st.text(max_size=30).filter(str.isprintable),
    idempotency=st.none() | st.text(max_size=140),
)
def test_any_request_gets_an_api_answer_and_invalid_jobs_are_never_published(
    tmp_path: Path, body: bytes, key: str, idempotency: str | None
) -> None:
    app, publisher, validate = _app(tmp_path)

    async def main() -> int:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        if idempotency is not None and idempotency.isprintable() and "\n" not in idempotency:
            headers["Idempotency-Key"] = idempotency
        response = await client.post("/v1/messages", data=body, headers=headers)
        batch = await client.post(
            "/v1/messages:batch", data=b'{"messages": [' + body + b"]}", headers=headers
        )
        assert batch.status_code in {200, 400, 401, 413, 422, 429}
        return response.status_code

    status = trio.run(main)
    assert status in {202, 400, 401, 403, 409, 422}
    for published in publisher.published:
        try:
            validate(published)
        except ValidationError:  # pragma: no cover - the failure this test is for
            raise AssertionError("an invalid job was published") from None


def test_a_valid_job_with_the_key_is_published_once(tmp_path: Path) -> None:
    app, publisher, _validate = _app(tmp_path)

    async def main() -> list[int]:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "k-1"}
        codes = []
        for body in (job_body(1), job_body(1), job_body(2), b"{"):
            response = await client.post("/v1/messages", data=body, headers=headers)
            codes.append(response.status_code)
        return codes

    assert trio.run(main) == [202, 202, 409, 422]
    assert publisher.published == [job_body(1)]
