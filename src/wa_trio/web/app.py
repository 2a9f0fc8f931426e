"""The worker's HTTP face: /healthz, /readyz, /livez, /metrics, and the operator's /login.

A Quart-Trio app served by hypercorn's trio ``serve()`` as one task of the root nursery, stopped
through its shutdown trigger. Handlers only read state the other tasks keep; the one broker round
trip (/healthz) goes through ``BrokerMonitor.check`` (2 s timeout, 5 s cache).

Who may do what: /healthz, /readyz, /livez and /metrics are open (they reveal no message and
change nothing; restrict them at the network if needed, docs/security.md). /login reveals the
login QR, which lets whoever scans it link *their* phone and read what the worker sends, and
POST /login/relogin changes state: both need the operator token (WHATSAPP_ADMIN_TOKEN), as the
password of HTTP Basic (so a browser asks for it; no token in URLs) or as a Bearer token.
GET/POST /webhooks/whatsapp (Cloud API transport only) are Meta's: authenticated by Meta's
signature and verify token (``meta_webhook.py``), never by the operator token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.core.envelope import ValidationError, clean_destination
from wa_trio.core.identity import person_key
from wa_trio.log import Redactor, log_contained, mask_phone
from wa_trio.metrics import Metrics
from wa_trio.transport import ConnectionState, Transport
from wa_trio.transport.cloud_api.webhook import MAX_BODY, SIGNATURE_HEADER, MetaWebhook
from wa_trio.web import login_page
from wa_trio.web.api import HttpApi, api_routes
from wa_trio.web.console import ConsoleSource, console_routes
from wa_trio.web.console_auth import COOKIE, ConsoleAuth, same_origin

METRICS_CACHE = 1.0  # seconds a rendered /metrics is served again (a scrape flood costs once)


class ConsumerState(Protocol):
    @property
    def connected(self) -> bool: ...

    def statistics(self) -> Any: ...


def _is(transport: Transport, state: ConnectionState) -> float:
    return 1.0 if transport.state is state else 0.0


def _unauthorized() -> Response:
    return Response(
        "operator token required (HTTP Basic password, or Authorization: Bearer)\n",
        status=401,
        content_type="text/plain; charset=utf-8",
        headers={"WWW-Authenticate": 'Basic realm="wa-trio", charset="UTF-8"'},
    )


def reachable(url: str) -> str:
    """A listening URL as a local client reaches it (a wildcard bind answers on loopback)."""
    return url.replace("0.0.0.0", "127.0.0.1")  # noqa: S104


def create_app(
    *,
    consumer: ConsumerState,
    monitor: BrokerMonitor,
    transport: Transport,
    metrics: Metrics,
    admin_token: str,
    redactor: Redactor | None = None,
    metrics_cache: float = METRICS_CACHE,
    session_path: Path | None = None,
    meta_webhook: MetaWebhook | None = None,
    api: HttpApi | None = None,
    console: ConsoleSource | None = None,
    account: str | None = None,
) -> QuartTrio:
    app = QuartTrio("wa_trio")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY  # no route takes a larger body
    redactor = redactor or Redactor(production=True)
    contain_requests(app, metrics)
    _wire_metrics(metrics, transport)
    rendered: list[tuple[float, bytes]] = []
    broker_checks = _health_checks(consumer, monitor, transport, session_path)

    @app.get("/livez")
    async def livez() -> tuple[dict[str, Any], int]:
        """The process answers (Kubernetes liveness: never depends on the broker)."""
        return {"ok": ["process"], "failing": {}}, 200

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, Any], int]:
        ok, failing = await broker_checks()
        body = {
            "ok": ok,
            "failing": failing,
            "whatsapp": transport.state.value,
            "linked": masked_linked(transport),
        }
        return body, (200 if not failing else 503)

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        ok, failing = await broker_checks()
        state = transport.state.value
        if state == ConnectionState.CONNECTED.value:
            ok.append("whatsapp")
        else:
            failing.setdefault("whatsapp", state)
        return {"ok": ok, "failing": failing, "whatsapp": state}, (200 if not failing else 503)

    @app.get("/metrics")
    async def metrics_view() -> Response:
        now = trio.current_time()
        if not rendered or now - rendered[0][0] >= metrics_cache:
            rendered[:] = [(now, metrics.exposition())]
        return Response(rendered[0][1], content_type=CONTENT_TYPE_LATEST)

    def chosen() -> tuple[Transport, str] | None:
        asked = request.args.get("account")  # another account's name is not this one's page
        return None if asked not in (None, account) else (transport, "/login")

    login_routes(app, admin_token, redactor, chosen)
    dry_run_routes(app, admin_token, chosen)

    if meta_webhook is not None:
        meta_routes(app, lambda: meta_webhook)
    if api is not None:
        api_routes(app, api)
    if console is not None:
        console_routes(app, console, ConsoleAuth(admin_token))
    return app


def _wire_metrics(metrics: Metrics, transport: Transport) -> None:
    """Gauges read at scrape time from the transport, the one place that knows."""
    metrics.whatsapp_connected.set_function(
        lambda: 1.0 if transport.state is ConnectionState.CONNECTED else 0.0
    )
    metrics.account_blocked_until.set_function(lambda: transport.banned_until)
    metrics.connect_attempts.set_function(lambda: float(getattr(transport, "connect_attempts", 0)))
    for each in ConnectionState:
        metrics.whatsapp_state.labels(each.value).set_function(partial(_is, transport, each))


def _health_checks(
    consumer: ConsumerState,
    monitor: BrokerMonitor,
    transport: Transport,
    session_path: Path | None,
) -> Callable[[], Awaitable[tuple[list[str], dict[str, str]]]]:
    """What /healthz and /readyz check: (what is ok, what is failing and why)."""

    async def broker_checks() -> tuple[list[str], dict[str, str]]:
        ok: list[str] = []
        failing: dict[str, str] = {}
        if consumer.connected:
            ok.append("amqp_consumer")
        else:
            failing["amqp_consumer"] = "consuming connection is down (reconnecting)"
        result = await monitor.check()
        if result.ok:
            ok.append("broker")
        else:
            failing["broker"] = result.detail
        if session_path is not None and not await trio.Path(session_path).is_dir():
            failing["session"] = f"the session folder {session_path} is gone"
        problem = consumer.statistics().ledger_problem
        if problem:  # reported only while failing (the send ledger is local, not a service)
            failing["ledger"] = problem
        stopped = transport.health_problem()
        if stopped:  # the account cannot send until an operator acts (an expired token)
            failing["whatsapp"] = stopped
        return ok, failing

    return broker_checks


def contain_requests(app: QuartTrio, metrics: Metrics) -> None:
    """The request's bulkhead: whatever a route raises is a 500 for that request, counted
    (``wa_trio_contained_errors_total{boundary="request"}``) and logged without its message;
    the server and the worker go on. HTTP errors (404, 405, 413...) stay themselves."""

    @app.errorhandler(Exception)
    async def contained(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return error
        metrics.contained.labels("request").inc()
        log_contained("wa_trio:http:contained", error, path=request.path[:200])
        return Response("internal error\n", status=500)


def login_routes(
    app: QuartTrio,
    admin_token: str,
    redactor: Redactor,
    pick: Callable[[], tuple[Transport, str] | None],
) -> None:
    """GET /login and POST /login/relogin (operator token, or the console's session) for the
    transport ``pick`` names with the page's own address (None: no such account here, 404)."""
    auth = ConsoleAuth(admin_token)

    def allowed() -> bool:
        return auth.check(request.headers.get("Authorization"), request.cookies.get(COOKIE)).ok

    @app.get("/login")
    async def login() -> Response:
        if not allowed():
            return _unauthorized()
        picked = pick()
        if picked is None:
            return Response("no such account (or a standby)\n", status=404)
        page = login_page.render(picked[0].login_status(), redactor)
        return Response(
            page, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"}
        )

    @app.post("/login/relogin")
    async def relogin() -> Response:
        if not allowed():
            return _unauthorized()
        if not same_origin(request.headers):  # a cached Basic credential is not consent
            return Response("cross-site request refused\n", status=403)
        picked = pick()
        if picked is None:
            return Response("no such account (or a standby)\n", status=404)
        picked[0].request_relogin()
        return Response(
            "", status=303, headers={"Location": picked[1], "Cache-Control": "no-store"}
        )


def dry_run_routes(
    app: QuartTrio, admin_token: str, pick: Callable[[], tuple[Transport, str] | None]
) -> None:
    """POST /dry-run/inbound (operator token): a message "received" by a dry-run account, as
    ``wa-trio inbound`` sends it (docs/inbound.md). Other transports answer 404."""
    auth = ConsoleAuth(admin_token)

    @app.post("/dry-run/inbound")
    async def simulate() -> tuple[dict[str, Any], int]:
        if not auth.check(request.headers.get("Authorization"), request.cookies.get(COOKIE)).ok:
            return {"error": "operator token required"}, 401
        if not same_origin(request.headers):
            return {"error": "cross-site request refused"}, 403
        picked = pick()
        simulate_inbound = getattr(picked[0], "simulate_inbound", None) if picked else None
        if simulate_inbound is None:
            return {"error": "no dry-run account here"}, 404
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return {"error": 'expected {"from": "<number>", "text": "<text>"}'}, 422
        try:
            sender = clean_destination(person_key(str(body.get("from", ""))[:64]))
        except ValidationError as error:
            return {"error": f"from: {error.message}"}, 422
        return {
            "accepted": True,
            "whatsapp_message_id": simulate_inbound(sender, body["text"]),
        }, 202


def meta_routes(app: QuartTrio, hook_of: Callable[[], MetaWebhook | None]) -> None:
    """Meta's webhook routes, handled by the Cloud API account's ``MetaWebhook`` (``hook_of``:
    None while that account is not running here, e.g. a standby: 503, and Meta retries)."""

    @app.get("/webhooks/whatsapp")
    async def meta_handshake() -> Response:
        hook = hook_of()
        if hook is None:
            return Response("", status=503)
        args = request.args
        status, body = hook.handshake(
            args.get("hub.mode"), args.get("hub.verify_token"), args.get("hub.challenge")
        )
        return Response(body, status=status, content_type="text/plain; charset=utf-8")

    @app.post("/webhooks/whatsapp")
    async def meta_notification() -> Response:
        hook = hook_of()
        if hook is None:
            return Response("", status=503)
        if (request.content_length or 0) > MAX_BODY:
            return Response("", status=hook.refuse("too_large"))
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            return Response("", status=hook.refuse("unsigned"))  # nothing read, nothing parsed
        try:
            raw = await request.get_data(cache=False)
        except RequestEntityTooLarge:  # a chunked body that grew past the cap
            return Response("", status=hook.refuse("too_large"))
        body = raw if isinstance(raw, bytes) else raw.encode()
        return Response("", status=hook.receive(body, header))


def masked_linked(transport: Transport) -> str | None:
    """The linked number as health shows it (no token needed there: always masked)."""
    linked = transport.login_status().linked_as
    return mask_phone(linked) if linked else None


async def run_http(
    app: QuartTrio,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown`` is set; ``started()`` gets the bound URLs.

    Raises:
        OSError: the address cannot be bound (the CLI prints one line).
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
