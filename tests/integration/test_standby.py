"""A standby per account (issue 16): on one SQLite session (same host, the session lock,
WHATSAPP_STANDBY=on) and across replicas on PostgreSQL (WHATSAPP_STORE, each replica with its
own session folder as on another host, the account's advisory-lock lease). The second worker
waits and takes over when the first dies, kill -9 included, with nothing lost and nothing sent
twice outside the counted ambiguous window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import closed_port
from tests.helpers import delete_topology, job_body, publish_many, sent_records, wait_for
from wa_trio.config.settings import Settings

pytestmark = pytest.mark.fault


def _worker(env: dict[str, str], *, capture: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wa_trio", "run"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
    )


async def _get(port: int, path: str) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            return await http.get(path)
    except httpx.TransportError:
        return None


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_standby_takes_over_after_kill_9_with_nothing_lost(
    make_env: Callable[..., dict[str, str]], request: pytest.FixtureRequest, store: str
) -> None:
    first_port, second_port = closed_port(), closed_port()
    # paced (400/s) so that the kill lands mid-stream however fast the machine is
    env = make_env(
        WHATSAPP_PREFETCH_COUNT="10",
        WHATSAPP_STANDBY="on",
        WHATSAPP_RATE_LIMIT="400/s",
        WHATSAPP_RATE_BURST="1",
    )
    second_env = env
    if store == "postgresql":  # two hosts: a session folder each, one store
        env["WHATSAPP_STORE"] = request.getfixturevalue("pg_store")
        second_env = {**env, "WHATSAPP_SESSION_PATH": env["WHATSAPP_SESSION_PATH"] + "-b"}
    settings = Settings.from_env(env)
    total = 2000
    ids = [f"job-{i}" for i in range(total)]
    first = _worker({**env, "HTTP_PORT": str(first_port)})
    second: subprocess.Popen[bytes] | None = None
    try:

        async def serving(port: int, path: str, status: int) -> bool:
            answer = await _get(port, path)
            return answer is not None and answer.status_code == status

        await wait_for(lambda: serving(first_port, "/readyz", 200), what="the holder ready")
        second = _worker({**second_env, "HTTP_PORT": str(second_port)})
        await wait_for(lambda: serving(second_port, "/healthz", 200), what="the standby alive")
        ready = await _get(second_port, "/readyz")
        assert ready is not None and ready.status_code == 503
        assert "standby" in ready.json()["failing"]
        metrics = await _get(second_port, "/metrics")
        assert metrics is not None and "wa_trio_standby 1.0" in metrics.text
        await publish_many(settings, (job_body(i) for i in range(total)), message_ids=ids)
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) >= 500, what="500 sent")
        first.send_signal(signal.SIGKILL)
        killed_at = time.time()
        first.wait(30)
        sent_at_kill = len(sent_records(settings.dry_run_file))
        assert sent_at_kill < total, "the stream ended before the kill; the test proved nothing"
        await wait_for(
            lambda: len(sent_records(settings.dry_run_file)) > sent_at_kill,
            timeout=15,
            what="the standby sending",
        )
        taken_over = min(r["sent_at"] for r in sent_records(settings.dry_run_file)[sent_at_kill:])
        await wait_for(
            lambda: set(r["job_key"] for r in sent_records(settings.dry_run_file)) >= set(ids),
            timeout=120,
            what="every job sent",
        )
        text = await _get(second_port, "/metrics")
        assert text is not None
        ambiguous = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.text.splitlines()
            if line.startswith("worker_jobs_ambiguous_total{")
        )
        sent = Counter(r["job_key"] for r in sent_records(settings.dry_run_file))
        twice = sum(n - 1 for n in sent.values() if n > 1)
        print(
            f"\n{store}: standby took over {taken_over - killed_at:.2f} s after kill -9; "
            f"{twice} sent twice, {ambiguous:g} ambiguous (WHATSAPP_AMBIGUOUS=resend)"
        )
        # SQLite: the kernel wakes the standby at once (the goal, 5 s, with room to spare).
        # PostgreSQL: up to a 2 s retry and the 2 s grace, then start-up; measured 2.2-3.8 s,
        # the goal (5 s) is reported by the bench; the test holds the requirement (15 s)
        assert taken_over - killed_at < (5.0 if store == "sqlite" else 15.0)
        assert set(sent) == set(ids)
        assert twice <= ambiguous <= 1  # paced: one job in flight, the ambiguous window
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        await delete_topology(settings)


async def test_without_standby_a_second_worker_refuses_with_one_line(
    make_env: Callable[..., dict[str, str]],
) -> None:
    env = make_env()
    settings = Settings.from_env(env)
    port = closed_port()
    first = _worker({**env, "HTTP_PORT": str(port)})
    try:

        async def up() -> bool:
            answer = await _get(port, "/healthz")
            return answer is not None and answer.status_code == 200

        await wait_for(up, what="the first worker up")
        second = _worker({**env, "HTTP_PORT": str(closed_port())}, capture=True)
        _, err = second.communicate(timeout=60)
        lines = err.decode().strip().splitlines()
        assert second.returncode == 2
        assert len(lines) == 1 and "WHATSAPP_STANDBY=on" in lines[0], lines
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
        await delete_topology(settings)
