"""Many neonize accounts in one process (issue 16): neonize keeps its clients in plain Go
maps, and two clients starting or stopping at once aborted the process ("fatal error:
concurrent map writes" or "concurrent map read and map write", 2 runs out of 2
with 40 accounts reconnecting offline for 30 s, 0 of 2 with the guard). With the guard
(``runtime.GoMaps``) the process lives on through many connect attempts of every account."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import closed_port
from tests.helpers import delete_topology
from wa_trio.config.settings import Settings

pytestmark = pytest.mark.real_client


async def test_forty_neonize_accounts_reconnecting_offline_do_not_abort_the_process(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    port = closed_port()
    names = ",".join(f"acct-{i}" for i in range(40))
    env = make_env(WHATSAPP_TRANSPORT="neonize", WHATSAPP_ACCOUNTS=names, HTTP_PORT=str(port))
    settings = Settings.from_env(env)
    errors = tmp_path / "stderr"
    with errors.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "wa_trio", "run"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        attempts = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and attempts < 200:  # 5 tries an account
            assert process.poll() is None, errors.read_text()[-2000:]
            try:
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                attempts = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("whatsapp_connect_attempts{")
                )
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, errors.read_text()[-2000:]
        assert attempts >= 200, f"only {attempts:g} connect attempts in 60 s"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        for name in (None, *settings.accounts):
            await delete_topology(settings if name is None else settings.for_account(name))
