"""The HTTP send API (issue 32) through a real worker and the real broker: a POSTed job is
sent; one Idempotency-Key twice is one send; another body under it is 409; an invalid job is 422
with its DLQ code and nothing published; no key is 401; the broker away is 503 within a second;
GET follows the job to ``sent``; the OpenAPI document carries the worker's job schema."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import jsonschema
import pytest
import trio

from tests.conftest import StartWorker, closed_port
from tests.helpers import UID, job_body, queue_count, sent_records, wait_for
from wa_trio.config.settings import Settings
from wa_trio.core.api_keys import digest
from wa_trio.web.api import job_schema

KEY = "billing-key-0123456789abcdefghij"
OTHER = "cron-key-0123456789abcdefghijklm"
KEYS = f"billing:{KEY},cron:sha256={digest(OTHER).hex()}@shop"


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api_settings(make_env: Callable[..., dict[str, str]]) -> Settings:
    return Settings.from_env(make_env(WHATSAPP_API_KEYS=KEYS, WHATSAPP_API_RATE="100/s"))


async def test_a_posted_job_is_sent_once_per_idempotency_key(
    delete_after: Callable[[Settings], Settings], api_settings: Settings, start_worker: StartWorker
) -> None:
    delete_after(api_settings)
    worker = await start_worker(api_settings)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        headers = {**bearer(), "Idempotency-Key": "order-42"}
        first = await http.post("/v1/messages", content=job_body(1), headers=headers)
        assert first.status_code == 202, first.text
        assert first.json() == {"job_key": "order-42", "message_id": "order-42"}
        again = await http.post("/v1/messages", content=job_body(1), headers=headers)
        assert again.status_code == 202 and again.json() == first.json()
        other = await http.post("/v1/messages", content=job_body(2), headers=headers)
        assert other.status_code == 409
        assert other.json()["errors"][0]["code"] == "message_id_conflict"
        await wait_for(lambda: len(sent_records(api_settings.dry_run_file)) >= 1, what="sent")

        async def followed() -> bool:
            status = await http.get("/v1/messages/order-42", headers=bearer())
            return bool(status.status_code == 200 and status.json()["status"] == "sent")

        await wait_for(followed, what="GET follows the job to sent")
        status = (await http.get("/v1/messages/order-42", headers=bearer())).json()
        assert status["whatsapp_message_id"]
        hidden = await http.get("/v1/messages/order-42", headers=bearer(OTHER))
        assert hidden.status_code == 404  # another client's job
    await trio.sleep(0.3)
    assert [r["job_key"] for r in sent_records(api_settings.dry_run_file)] == ["order-42"]


async def test_refusals_publish_nothing(
    delete_after: Callable[[Settings], Settings], api_settings: Settings, start_worker: StartWorker
) -> None:
    delete_after(api_settings)
    worker = await start_worker(api_settings)
    worker.pipeline.stop()  # nothing consumes: what was published stays in the queue
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        invalid = await http.post(
            "/v1/messages", content=job_body(destination="not a number"), headers=bearer()
        )
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["code"] == "invalid_destination"
        for headers in ({}, bearer("wrong-key-0123456789abcdefghij"), {"Authorization": KEY}):
            denied = await http.post("/v1/messages", content=job_body(), headers=headers)
            assert denied.status_code == 401
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        # the cron key may only send jobs naming its account
        pinned = await http.post("/v1/messages", content=job_body(), headers=bearer(OTHER))
        assert pinned.status_code == 403
        assert pinned.json()["errors"][0]["code"] == "account_not_allowed"
        too_many = {"messages": [json.loads(job_body(n)) for n in range(101)]}
        big = await http.post("/v1/messages:batch", json=too_many, headers=bearer())
        assert big.status_code == 413
    assert await queue_count(api_settings, api_settings.queue_name) == 0
    assert (
        worker.metrics.registry.get_sample_value(
            "wa_trio_api_requests_total", {"outcome": "invalid"}
        )
        == 1
    )


async def test_a_batch_answers_one_result_per_job(
    delete_after: Callable[[Settings], Settings], api_settings: Settings, start_worker: StartWorker
) -> None:
    delete_after(api_settings)
    worker = await start_worker(api_settings)
    jobs = [json.loads(job_body(n)) for n in range(3)]
    jobs[1]["destination"] = "nope"
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        headers = {**bearer(), "Idempotency-Key": "batch-7"}
        response = await http.post("/v1/messages:batch", json={"messages": jobs}, headers=headers)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["status"] for r in results] == [202, 422, 202]
        assert [r.get("job_key") for r in results] == ["batch-7:0", None, "batch-7:2"]
    await wait_for(lambda: len(sent_records(api_settings.dry_run_file)) == 2, what="two sent")


async def test_over_its_rate_a_key_is_told_when_to_come_back(
    delete_after: Callable[[Settings], Settings],
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
) -> None:
    settings = delete_after(
        Settings.from_env(make_env(WHATSAPP_API_KEYS=KEYS, WHATSAPP_API_RATE="2/s"))
    )
    worker = await start_worker(settings)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        codes = [
            (await http.post("/v1/messages", content=job_body(n), headers=bearer())).status_code
            for n in range(4)
        ]
        assert codes[:2] == [202, 202] and 429 in codes[2:]
        limited = await http.post("/v1/messages", content=job_body(9), headers=bearer())
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


async def test_the_broker_away_is_503_within_a_second(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(
        make_env(
            WHATSAPP_API_KEYS=KEYS,
            RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
        )
    )
    worker = await start_worker(settings)
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=5) as http:
        started = time.monotonic()
        response = await http.post("/v1/messages", content=job_body(), headers=bearer())
        assert response.status_code == 503
        assert response.json()["errors"][0]["code"] == "broker_unavailable"
        assert time.monotonic() - started < 1.0


async def test_the_openapi_document_carries_the_job_schema(
    delete_after: Callable[[Settings], Settings], api_settings: Settings, start_worker: StartWorker
) -> None:
    from openapi_spec_validator import validate

    delete_after(api_settings)
    worker = await start_worker(api_settings)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        document = (await http.get("/openapi.json")).json()
    validate(document)
    job = document["components"]["schemas"]["Job"]
    assert job["properties"] == job_schema()["properties"]
    jsonschema.validate(json.loads(job_body()), job)
    assert json.loads(job_body())["user_id"] == UID


async def test_with_several_accounts_the_process_api_publishes_to_the_pool(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    """WHATSAPP_ACCOUNTS=a,b: one API for the process; a job pinned to ``a`` by a key limited
    to it is sent by ``a``, and GET follows it to ``sent`` (the account's status events)."""
    from tests.helpers import delete_topology
    from wa_trio.accounts.multi import Accounts
    from wa_trio.run import run_worker

    settings = Settings.from_env(
        make_env(WHATSAPP_ACCOUNTS="a,b", WHATSAPP_API_KEYS=KEYS.replace("@shop", "@a"))
    )
    accounts: Accounts = await nursery.start(
        lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
    )
    try:
        await wait_for(lambda: len(accounts.workers) == 2, what="two accounts")
        async with httpx.AsyncClient(base_url=accounts.http_url) as http:
            headers = {**bearer(OTHER), "Idempotency-Key": "pinned-1"}
            body = job_body(5, account="a")
            posted = await http.post("/v1/messages", content=body, headers=headers)
            assert posted.status_code == 202, posted.text

            async def followed() -> bool:
                got = await http.get("/v1/messages/pinned-1", headers=bearer(OTHER))
                return bool(got.status_code == 200 and got.json()["status"] == "sent")

            await wait_for(followed, what="GET follows the pinned job to sent")
        sent = sent_records(settings.for_account("a").dry_run_file)
        assert [r["job_key"] for r in sent] == ["pinned-1"]
    finally:
        accounts.stop()
        await trio.sleep(0.5)
        for name in settings.accounts:
            await delete_topology(settings.for_account(name))
        await delete_topology(settings)
