"""The HTTP send API (issue 32): a front door that publishes into RabbitMQ, the one path into
the pipeline. See docs/http-api.md.

- ``POST /v1/messages``: one job, exactly as on the queue, validated with the worker's own
  ``parse_envelope`` (invalid: 422 with the DLQ's code, nothing published); published with
  publisher confirms; ``202 {"job_key", "message_id"}`` only once the broker confirmed.
- ``POST /v1/messages:batch``: ``{"messages": [job, ...]}`` (at most WHATSAPP_API_BATCH_MAX),
  one result per job.
- ``Idempotency-Key``: the job's message id (a batch's job ``i`` gets ``KEY:i``). The same key
  and body answer the same 202 and publish nothing; another body is ``409
  message_id_conflict`` (the ledger's rule).
- ``GET /v1/messages/{job_key}``: the job's last status (queued, retrying, sent with the
  WhatsApp id, delivered, read, failed with its code), kept from the status events.
- ``GET /openapi.json``: OpenAPI 3.1, its job schema the one the worker is tested against.

Keys (WHATSAPP_API_KEYS) are Bearer tokens, separate from the operator token; a wrong or
missing key is 401 whatever the route (compared in constant time: ``core/api_keys``). Each
client has a request rate (429 with Retry-After). The broker away: 503 at once, never a hang.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import Any, cast

import eliot
import trio
from quart import Response, request
from quart_trio import QuartTrio

from wa_trio.bus.amqp import BrokerError
from wa_trio.bus.job_publisher import LivePublisher
from wa_trio.config.settings import Settings
from wa_trio.core.api_keys import ApiKey, RateGate, find_key
from wa_trio.core.envelope import ValidationError, WhatsAppEnvelope
from wa_trio.core.errors import WaTrioError
from wa_trio.core.job import body_hash, job_key
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.api_requests import Accepted, ApiRequests
from wa_trio.web.openapi import STATUS_ORDER, openapi

#: a JSON answer and its HTTP status
Answer = tuple[dict[str, Any], int]

MAX_KEY = 128  # characters of an Idempotency-Key (it becomes the message id)
#: statuses a later event may not overwrite with an earlier one (receipts arrive out of order)
_RANK = {status: rank for rank, group in enumerate(STATUS_ORDER) for status in group}


def job_schema() -> dict[str, Any]:
    """The job's JSON Schema (the file shipped in this package)."""
    text = resources.files("wa_trio.web").joinpath("job.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


class HttpApi:
    """What the routes need: keys, a publisher, the record of accepted jobs, a validator."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: ApiRequests,
        publisher: LivePublisher,
        validate: Callable[[bytes], WhatsAppEnvelope],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.publisher = publisher
        self.validate = validate
        self.keys: tuple[ApiKey, ...] = settings.api_keys
        self.gate = RateGate(settings.api_rate)
        self._updates_in, self._updates_out = trio.open_memory_channel[dict[str, Any]](10_000)

    # ------------------------------------------------------------------ status, from events

    def observe(self, event: dict[str, Any]) -> None:
        """A status event (trio thread, never blocks): kept for ``GET``, by a task."""
        try:
            self._updates_in.send_nowait(event)
        except trio.WouldBlock:
            self.metrics.status_events_dropped.inc()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The publisher's connection, and the status updates written from a worker thread."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.publisher.run)
            task_status.started()
            async for event in self._updates_out:
                await self._record(event)

    async def _record(self, event: dict[str, Any]) -> None:
        key, status = str(event.get("job_key", "")), str(event.get("status", ""))
        rank = _RANK.get(status, 0)
        over = tuple(known for known, at in _RANK.items() if at <= rank)
        try:  # one statement: jobs the API never accepted are simply not matched
            await trio.to_thread.run_sync(
                partial(
                    self.store.update,
                    key,
                    status,
                    event.get("code"),
                    event.get("whatsapp_message_id"),
                    time.time(),
                    over=over,
                )
            )
        except WaTrioError as error:  # the store failing: one status lost, said so
            eliot.log_message(message_type="wa_trio:api:status_unrecorded", error=str(error))

    # ----------------------------------------------------------------------------- requests

    def client(self, header: str | None) -> ApiKey | None:
        token = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        return find_key(self.keys, token)

    async def accept(
        self, key: ApiKey, body: bytes, idempotency: str | None
    ) -> tuple[dict[str, Any], int]:
        """One job: (answer, status)."""
        problem = self._problem(key, body)
        if problem is not None:
            return problem
        message_id = idempotency or str(uuid.uuid4())
        jkey, hashed = job_key(message_id, body), body_hash(body)
        answer = {"job_key": jkey, "message_id": message_id}
        try:
            earlier = await trio.to_thread.run_sync(
                self.store.accept, jkey, hashed, key.client, time.time()
            )
        except WaTrioError as error:
            return _problem("store_unavailable", str(error)), 503
        if earlier is not None:
            if earlier.body_hash != hashed:
                self.metrics.api_requests.labels("conflict").inc()
                return _problem(
                    "message_id_conflict",
                    "this Idempotency-Key was used for a different body; not published",
                ), 409
            self.metrics.api_requests.labels("repeated").inc()
            return answer, 202
        try:
            await self.publisher.publish(body, message_id)
        except BrokerError as error:
            await trio.to_thread.run_sync(self.store.forget, jkey)
            self.metrics.api_requests.labels("unavailable").inc()
            return _problem("broker_unavailable", str(error)[:200]), 503
        self.metrics.api_requests.labels("accepted").inc()
        return answer, 202

    def wait(self, key: ApiKey, jobs: int) -> float:
        """0: go; else the seconds until ``key`` may send ``jobs`` more (429)."""
        wait = self.gate.take(key.client, time.monotonic(), float(max(1, jobs)))
        if wait:
            self.metrics.api_requests.labels("limited").inc()
        return wait

    async def one(self, key: ApiKey, body: bytes, idempotency: str | None) -> Answer:
        checked, bad = _idempotency_key(idempotency)
        return bad if bad is not None else await self.accept(key, body, checked)

    async def batch(self, key: ApiKey, body: bytes, idempotency: str | None) -> Answer | float:
        """Several jobs, one result each (their key ``KEY:i``); a float: wait (429)."""
        checked, bad = _idempotency_key(idempotency)
        if bad is not None:
            return bad
        jobs = _batch(body)
        if jobs is None:
            return _problem("invalid_batch", 'a JSON object {"messages": [job, ...]}'), 422
        most = self.settings.api_batch_max
        if len(jobs) > most:
            return _problem("batch_too_large", f"at most {most} (WHATSAPP_API_BATCH_MAX)"), 413
        wait = self.wait(key, len(jobs))
        if wait:
            return wait
        results = []
        for index, job in enumerate(jobs):
            item_key = None if checked is None else f"{checked}:{index}"
            answer, status = await self.accept(key, job, item_key)
            results.append({"index": index, "status": status, **answer})
        return {"results": results}, 200

    async def status_of(self, client: ApiKey, key: str) -> Answer:
        try:
            accepted = await trio.to_thread.run_sync(self.store.get, key)
        except WaTrioError as error:
            return _problem("store_unavailable", str(error)), 503
        if accepted is None or accepted.client != client.client:
            return _problem("not_found", "no job with this key was accepted for this key"), 404
        return _status(accepted), 200

    def _problem(self, key: ApiKey, body: bytes) -> Answer | None:
        try:
            self.validate(body)
        except ValidationError as error:
            self.metrics.api_requests.labels("invalid").inc()
            return {"errors": [{"code": error.code, "message": error.message}]}, 422
        if not key.allows(_account_of(body)):
            self.metrics.api_requests.labels("forbidden").inc()
            return _problem(
                "account_not_allowed", "this key may only send jobs naming its accounts"
            ), 403
        return None


def build_api(
    settings: Settings, metrics: Metrics, validate: Callable[[bytes], WhatsAppEnvelope]
) -> HttpApi | None:
    """The API when WHATSAPP_API_KEYS lists a key (blocking: opens its store), else None."""
    if not settings.api_keys:
        return None
    return HttpApi(
        settings, metrics, stores.api_requests(settings), LivePublisher(settings), validate
    )


def _account_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    account = data.get("account") if isinstance(data, dict) else None
    return account if isinstance(account, str) else None


def _problem(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


def _status(accepted: Accepted) -> dict[str, Any]:
    return {
        "job_key": accepted.job_key,
        "status": accepted.status,
        "code": accepted.code,
        "whatsapp_message_id": accepted.whatsapp_id,
        "accepted_at": accepted.created_at,
        "updated_at": accepted.updated_at,
    }


def _idempotency_key(value: str | None) -> tuple[str | None, Answer | None]:
    if value is None:
        return None, None
    if not value or len(value) > MAX_KEY or not value.isprintable():
        return None, (_problem("invalid_idempotency_key", f"1-{MAX_KEY} printable characters"), 400)
    return value, None


def _json_response(body: dict[str, Any], status: int, **headers: str) -> Response:
    return Response(
        json.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _denied() -> Response:
    return _json_response(
        _problem("unauthorized", "an API key is required (Bearer)"),
        401,
        **{"WWW-Authenticate": 'Bearer realm="wa-trio api"'},
    )


def _limited(wait: float) -> Response:
    problem = _problem("rate_limited", "too many requests for this key")
    return _json_response(problem, 429, **{"Retry-After": str(max(1, math.ceil(wait)))})


async def _body() -> bytes:
    return cast(bytes, await request.get_data(as_text=False))


def api_routes(app: QuartTrio, api: HttpApi) -> None:
    """The routes of the send API on ``app`` (see the module docstring); each a thin call of
    ``HttpApi`` (401 and 429 are answered before the body is read)."""

    @app.post("/v1/messages")
    async def post_message() -> Any:
        key = api.client(request.headers.get("Authorization"))
        if key is None:
            return _denied()
        wait = api.wait(key, 1)
        if wait:
            return _limited(wait)
        return await api.one(key, await _body(), request.headers.get("Idempotency-Key"))

    @app.post("/v1/messages:batch")
    async def post_batch() -> Any:
        key = api.client(request.headers.get("Authorization"))
        if key is None:
            return _denied()
        answer = await api.batch(key, await _body(), request.headers.get("Idempotency-Key"))
        if isinstance(answer, float):
            return _limited(answer)
        return answer

    @app.get("/v1/messages/<path:key>")
    async def get_message(key: str) -> Any:
        client = api.client(request.headers.get("Authorization"))
        if client is None:
            return _denied()
        return await api.status_of(client, key)

    @app.get("/openapi.json")
    async def openapi_document() -> Any:
        return openapi(job_schema()), 200


def _batch(body: bytes) -> list[bytes] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return None
    return [json.dumps(job, ensure_ascii=False).encode() for job in messages]


__all__ = ["HttpApi", "api_routes", "build_api", "job_schema"]
