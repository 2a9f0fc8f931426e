"""The HTTP apps of the other run modes: a multi-account process's one server
(``create_accounts_app``) and a standby's (``create_standby_app``). The helpers they share with
the one-account app (the login routes, the request bulkhead) are ``app.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response, request
from quart_trio import QuartTrio

from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics, accounts_exposition
from wa_trio.transport import ConnectionState, Transport
from wa_trio.web.api import HttpApi, api_routes
from wa_trio.web.app import (
    ConsumerState,
    contain_requests,
    dry_run_routes,
    login_routes,
    masked_linked,
    meta_routes,
)
from wa_trio.web.console import ConsoleSource, console_routes
from wa_trio.web.console_auth import ConsoleAuth


class AccountParts(Protocol):
    """What the multi-account app reads of each account's worker (``app.Worker``)."""

    @property
    def transport(self) -> Transport: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def pipeline(self) -> ConsumerState: ...

    @property
    def monitor(self) -> BrokerMonitor: ...


def create_accounts_app(
    *,
    workers: Mapping[str, AccountParts],
    accounts: tuple[str, ...],
    metrics: Metrics,
    admin_token: str,
    redactor: Redactor,
    api: HttpApi | None = None,
    console: ConsoleSource | None = None,
    cloud_account: str | None = None,
) -> QuartTrio:
    """The one HTTP server of a multi-account process: /healthz and /readyz per account (an
    account still waiting as a standby is reported so), /metrics with an ``account`` label,
    /login?account=NAME and POST /login/relogin?account=NAME (operator token), and Meta's
    webhook for the Cloud API account (``cloud_account``) when there is one."""
    app = QuartTrio("wa_trio_accounts")
    contain_requests(app, metrics)

    async def report() -> tuple[dict[str, Any], bool, bool]:
        return await _report(workers, accounts)

    @app.get("/livez")
    async def livez() -> tuple[dict[str, Any], int]:
        return {"ok": ["process"], "failing": {}}, 200

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, Any], int]:
        body, healthy, _ready = await report()
        return {"accounts": body}, (200 if healthy else 503)

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        body, _healthy, ready = await report()  # ready: some account can take pool jobs
        return {"accounts": body}, (200 if ready else 503)

    @app.get("/metrics")
    async def metrics_view() -> Response:
        text = accounts_exposition(
            lambda: {name: worker.metrics for name, worker in workers.items()}, metrics
        )
        return Response(text, content_type=CONTENT_TYPE_LATEST)

    def chosen() -> tuple[Transport, str] | None:
        name = request.args.get("account", accounts[0])
        worker = workers.get(name)  # only a running account's name: safe in a Location
        return None if worker is None else (worker.transport, f"/login?account={name}")

    login_routes(app, admin_token, redactor, chosen)
    dry_run_routes(app, admin_token, chosen)
    if cloud_account is not None:
        # the account's ``app.Worker`` while it runs (a standby has none: 503)
        meta_routes(app, lambda: getattr(workers.get(cloud_account), "meta", None))
    if api is not None:
        api_routes(app, api)
    if console is not None:
        console_routes(app, console, ConsoleAuth(admin_token))
    return app


async def _report(
    workers: Mapping[str, AccountParts], accounts: tuple[str, ...]
) -> tuple[dict[str, Any], bool, bool]:
    """Health and readiness per account (a standby is reported so)."""
    body: dict[str, Any] = {}
    healthy, ready = True, False
    for name in accounts:
        worker = workers.get(name)
        if worker is None:
            body[name] = {"state": "standby", "failing": {}}
            continue
        failing: dict[str, str] = {}
        if not worker.pipeline.connected:
            failing["amqp_consumer"] = "consuming connection is down (reconnecting)"
        result = await worker.monitor.check()
        if not result.ok:
            failing["broker"] = result.detail
        problem = worker.transport.health_problem()
        if problem:
            failing["whatsapp"] = problem
        state = worker.transport.state
        linked = masked_linked(worker.transport)
        body[name] = {"state": state.value, "failing": failing, "linked": linked}
        healthy = healthy and not failing
        ready = ready or (not failing and state is ConnectionState.CONNECTED)
    return body, healthy, ready


def create_standby_app(metrics: Metrics, reason: str) -> QuartTrio:
    """What a standby serves while it waits for the session: alive (/livez, /healthz 200, so
    no supervisor restarts it), not ready (/readyz 503), and its metrics (``wa_trio_standby``)."""
    app = QuartTrio("wa_trio_standby")
    contain_requests(app, metrics)

    @app.get("/livez")
    @app.get("/healthz")
    async def alive() -> tuple[dict[str, Any], int]:
        return {"ok": ["process"], "failing": {}, "standby": reason}, 200

    @app.get("/readyz")
    async def not_ready() -> tuple[dict[str, Any], int]:
        return {"ok": ["process"], "failing": {"standby": reason}, "standby": reason}, 503

    @app.get("/metrics")
    async def metrics_view() -> Response:
        return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["AccountParts", "create_accounts_app", "create_standby_app"]
