"""The worker's HTTP face: /healthz, /readyz, /metrics (and /login, see login_page).

A Quart-Trio app served by hypercorn's trio ``serve()`` as one task of the root nursery, stopped
through its shutdown trigger. Handlers only read state the other tasks keep; the one broker round
trip (/healthz) goes through ``BrokerMonitor.check`` (2 s timeout, 5 s cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Response
from quart_trio import QuartTrio

from wa_trio.metrics import Metrics
from wa_trio.monitor import BrokerMonitor
from wa_trio.transport import ConnectionState, Transport


class ConsumerState(Protocol):
    @property
    def connected(self) -> bool: ...


LoginView = Callable[[], Any]


def create_app(
    *,
    consumer: ConsumerState,
    monitor: BrokerMonitor,
    transport: Transport,
    metrics: Metrics,
    login_view: LoginView | None = None,
) -> QuartTrio:
    app = QuartTrio("wa_trio")
    # read at scrape time from the transport, the one place that knows
    metrics.whatsapp_connected.set_function(
        lambda: 1.0 if transport.state is ConnectionState.CONNECTED else 0.0
    )

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
        return ok, failing

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, Any], int]:
        ok, failing = await broker_checks()
        body = {"ok": ok, "failing": failing, "whatsapp": transport.state.value}
        return body, (200 if not failing else 503)

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        ok, failing = await broker_checks()
        state = transport.state.value
        if state == ConnectionState.CONNECTED.value:
            ok.append("whatsapp")
        else:
            failing["whatsapp"] = state
        return {"ok": ok, "failing": failing, "whatsapp": state}, (200 if not failing else 503)

    @app.get("/metrics")
    async def metrics_view() -> Response:
        return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)

    if login_view is not None:
        app.add_url_rule("/login", "login", login_view, methods=["GET"])

    return app


async def run_http(
    app: QuartTrio,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown`` is set; ``started()`` gets the bound URLs."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
