"""/login seen as a person sees it (issue 21): the worker's page in headless Chromium (Debian's
``chromium``), its screenshot decoded with zxing-cpp, with the operator token given the way a
browser gives it after its HTTP Basic prompt. The page must carry the QR code the client emitted,
the next one after it changes, and the pairing code in the pair-code view."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import zxingcpp
from PIL import Image

from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import require_tool, wait_for
from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.config.settings import Settings
from wa_trio.metrics import Metrics
from wa_trio.pipeline.consumer import PipelineStatistics
from wa_trio.transport.neonize import NeonizeTransport
from wa_trio.web.app import create_app, run_http

TOKEN = "browser-token-0123456789"
pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=900,1100",
]


class _Down:
    connected = False

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(connected=False, connections=0, ledger_problem=None)


def _chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    exe = require_tool("chromium", "chromium-browser", how="apt install chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=90,
            check=True,
        )


def _url(base: str) -> str:
    # credentials in the address bar are what the browser's Basic prompt turns into an
    # Authorization header; the worker itself never puts a token in a URL
    return base.replace("http://", f"http://operator:{TOKEN}@") + "/login"


def _decode(png: Path) -> list[str]:
    return [result.text for result in zxingcpp.read_barcodes(Image.open(png).convert("L"))]


async def _serve(transport: NeonizeTransport, settings: Settings, nursery: trio.Nursery) -> str:
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    app = create_app(
        consumer=_Down(),
        monitor=BrokerMonitor(settings, metrics),
        transport=transport,
        metrics=metrics,
        admin_token=TOKEN,
    )
    urls: list[str] = await nursery.start(run_http, app, "127.0.0.1", 0, trio.Event())
    return urls[0]


async def test_the_login_page_shows_the_qr_the_client_emitted_and_the_next_one(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_TRANSPORT="neonize"))
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        base = await _serve(transport, settings, nursery)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        for n, payload in enumerate(["2@FIRST-payload,key1,key2", "2@SECOND-payload,key3,key4"]):
            await trio.to_thread.run_sync(clients[0].fire_qr, payload)
            await wait_for(lambda p=payload: transport.login.qr == p, what="qr")  # type: ignore[misc]
            shot = tmp_path / f"login-{n}.png"
            await trio.to_thread.run_sync(
                lambda s=shot: _chromium(f"--screenshot={s}", _url(base))  # type: ignore[misc]
            )
            assert _decode(shot) == [payload]
        dom = (await trio.to_thread.run_sync(_chromium, "--dump-dom", _url(base))).stdout.decode()
        assert 'http-equiv="refresh"' in dom  # the open page picks up the next code by itself
        nursery.cancel_scope.cancel()


async def test_the_pair_code_view_shows_the_code_in_a_browser(
    make_env: Callable[..., dict[str, str]],
) -> None:
    settings = Settings.from_env(
        make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_PAIR_PHONE="+55 11 98888-7777")
    )
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        base = await _serve(transport, settings, nursery)
        await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
        await trio.to_thread.run_sync(clients[0].fire_qr, "2@QR")
        await wait_for(lambda: transport.login.pair_code is not None, what="pair code")
        dom = (await trio.to_thread.run_sync(_chromium, "--dump-dom", _url(base))).stdout.decode()
        assert "ABCD-EFGH" in dom and "Link with phone number" in dom
        without_token = await trio.to_thread.run_sync(_chromium, "--dump-dom", base + "/login")
        assert "ABCD-EFGH" not in without_token.stdout.decode()
        nursery.cancel_scope.cancel()
