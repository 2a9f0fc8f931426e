"""The Cloud API route at Meta's top tier (issue 33): ``python bench/run.py --cloud``.

In one run, against ``bench/graph_server.py`` (a fast fake Graph API in its own process, on
loopback, HTTP/1.1 keep-alive):
  (1) a bare httpx client posting the same message bodies one after another (the baseline: what
      the route costs with nothing else around it);
  (2) the full worker (``wa-trio run`` with WHATSAPP_TRANSPORT=cloud-api: validation, the
      ledger, exactly-once, status events on, metrics, eliot at production settings) at
      prefetch 100, paced at Meta's top tier (WHATSAPP_CLOUD_MPS=1000);
  (3) the same worker unpaced (how far the worker goes on one core).
Rates from the fake's first to last send; CPU from /proc (the bench process for (1), the worker
for (2) and (3)); CPU per job is the figure that holds on a busy machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpcore
import httpx
import trio

from run import cleanup, cpu_seconds, env_for, publish, start_worker, stop  # bench/run.py
from wa_trio.config.settings import Settings

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token-0123456789abcdef"
BODY = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "5511999999999",
        "type": "text", "text": {"body": "Your code is 123456", "preview_url": False}}


def start_graph(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"graph-{uuid.uuid4().hex[:6]}.port"
    proc = subprocess.Popen([sys.executable, str(HERE / "graph_server.py"), str(port_file)])
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if time.monotonic() > deadline:
            raise RuntimeError("the fake Graph API did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def graph_stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        stats: dict[str, float] = json.loads(answer.read())
    return stats


def _rate(stats: dict[str, float]) -> float:
    return (stats["sends"] - 1) / (stats["last"] - stats["first"])


def bare_httpx(n: int, tmp: Path, *, core: bool = False) -> dict[str, float]:
    """``n`` POSTs one after another with httpx (``core``: with httpcore, the layer under it)."""
    graph, port = start_graph(tmp)
    url = f"http://127.0.0.1:{port}/v24.0/1/messages"
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def post_all() -> None:
        if core:
            payload = json.dumps(BODY).encode()
            raw = [(b"authorization", f"Bearer {TOKEN}".encode()),
                   (b"content-type", b"application/json")]
            async with httpcore.AsyncConnectionPool() as pool:
                for _ in range(n):
                    answer = await pool.request("POST", url, headers=raw, content=payload)
                    assert answer.status == 200
                    json.loads(answer.content)
            return
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(n):
                answer = await client.post(url, json=BODY, headers=headers)
                answer.raise_for_status()
                answer.json()

    try:
        before = cpu_seconds(os.getpid())
        trio.run(post_all)
        cpu = cpu_seconds(os.getpid()) - before
        stats = graph_stats(port)
    finally:
        graph.terminate()
        graph.wait()
    return {"jobs_per_s": _rate(stats), "cpu_us_per_job": cpu / n * 1e6, "sent": stats["sends"]}


def cloud_worker(n: int, tmp: Path, mps: int) -> dict[str, float]:
    graph, port = start_graph(tmp)
    queue = f"bench.{uuid.uuid4().hex[:8]}.cloud{mps}"
    env = env_for(
        queue, tmp, WHATSAPP_TRANSPORT="cloud-api", WHATSAPP_PREFETCH_COUNT="100",
        WHATSAPP_CLOUD_API_URL=f"http://127.0.0.1:{port}/v24.0",
        WHATSAPP_CLOUD_PHONE_NUMBER_ID="1", WHATSAPP_CLOUD_ACCESS_TOKEN=TOKEN,
        WHATSAPP_CLOUD_APP_SECRET="bench-secret-0123456789",
        WHATSAPP_CLOUD_VERIFY_TOKEN="bench-verify-0123456789", WHATSAPP_CLOUD_MPS=str(mps),
    )
    settings = Settings.from_env(env)
    trio.run(publish, settings, n)
    try:
        proc, _startup = start_worker(env)
        try:
            before = cpu_seconds(proc.pid)
            deadline = time.monotonic() + 600
            while graph_stats(port)["sends"] < n and time.monotonic() < deadline:
                time.sleep(0.25)
            cpu = cpu_seconds(proc.pid) - before
            stats = graph_stats(port)
        finally:
            stop(proc)
            trio.run(cleanup, settings)
    finally:
        graph.terminate()
        graph.wait()
    return {"jobs_per_s": _rate(stats), "cpu_us_per_job": cpu / stats["sends"] * 1e6,
            "sent": stats["sends"], "core_share": cpu / (stats["last"] - stats["first"])}


def bench_cloud(n: int, tmp: Path) -> dict[str, Any]:
    bare = bare_httpx(n, tmp)
    core = bare_httpx(n, tmp, core=True)
    tier = cloud_worker(n, tmp, 1000)
    unpaced = cloud_worker(n, tmp, 10_000)
    return {"jobs": n, "bare_httpx": bare, "bare_httpcore": core, "worker_tier_1000": tier, "worker_unpaced": unpaced,
            "tier_rate_over_bare": tier["jobs_per_s"] / bare["jobs_per_s"],
            "unpaced_rate_over_bare": unpaced["jobs_per_s"] / bare["jobs_per_s"],
            "unpaced_cpu_over_bare": unpaced["cpu_us_per_job"] / bare["cpu_us_per_job"]}


def table(result: dict[str, Any]) -> list[str]:
    bare, core = result["bare_httpx"], result["bare_httpcore"]
    tier, unpaced = result["worker_tier_1000"], result["worker_unpaced"]
    return [
        f"Cloud API route, {result['jobs']:,} jobs, fake Graph on loopback (HTTP/1.1 keep-alive)",
        "", "| Sender | jobs/s | vs bare httpx | CPU us/job | core used |",
        "|---|---:|---:|---:|---:|",
        f"| bare httpx, one POST after another | {bare['jobs_per_s']:,.0f} | 1.00x | "
        f"{bare['cpu_us_per_job']:,.0f} | |",
        f"| bare httpcore (the layer under httpx), the same | {core['jobs_per_s']:,.0f} | "
        f"{core['jobs_per_s'] / bare['jobs_per_s']:.2f}x | {core['cpu_us_per_job']:,.0f} | |",
        f"| wa-trio, prefetch 100, status events on, paced at 1,000/s | {tier['jobs_per_s']:,.0f}"
        f" | {result['tier_rate_over_bare']:.2f}x | {tier['cpu_us_per_job']:,.0f} | "
        f"{tier['core_share']:.2f} |",
        f"| wa-trio, same, unpaced | {unpaced['jobs_per_s']:,.0f} | "
        f"{result['unpaced_rate_over_bare']:.2f}x | {unpaced['cpu_us_per_job']:,.0f} | "
        f"{unpaced['core_share']:.2f} |",
    ]
