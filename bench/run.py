"""wa-trio benchmark: how close to the broker's limit the worker runs (``nox -s bench``).

In one run, on the local RabbitMQ, with unique queues:
  (a) a bare aio-pika consumer acking each message (what a user would write on asyncio);
  (b) a bare consumer on our AMQP client (serena) under trio;
  (c) the full wa-trio worker (a real ``wa-trio run`` process: validation, ledger, metrics,
      eliot logging at production settings, acks) with the dry-run transport and pacing off,
      at prefetch 1, 10 and 100.
Throughput is (jobs - 1) / (last ack - first delivery) for (a)/(b), and from the dry-run file's
first to last ``sent_at`` for (c): start-up and publishing are not counted. Then: publish->send
latency at a fixed offered rate (200 jobs/s), the worker's RSS idle (neonize loaded, offline:
proxy on a closed port) and after a run, and the time from process start to /healthz 200.
Results: bench/results/<timestamp>.json and .md; copy the table into docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.config.settings import Settings
from wa_trio.core.schedule import LADDER

BROKER = os.environ.get("WA_TRIO_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
                   "text_message": "Your code is 123456", "destination": "+5511999999999"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(queue: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "RABBITMQ_URL": BROKER, "WHATSAPP_QUEUE_NAME": queue, "WHATSAPP_EXCHANGE": f"{queue}.x",
        "WHATSAPP_TRANSPORT": "dry-run", "WHATSAPP_DRY_RUN_FILE": str(tmp / f"{queue}.jsonl"),
        "WHATSAPP_SESSION_PATH": str(tmp / f"{queue}.session"), "ENV": "production",
        "WHATSAPP_RATE_LIMIT": "off", "WHATSAPP_RECIPIENT_INTERVAL": "0",
        "WHATSAPP_SEND_JITTER": "0", "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(free_port()),
        "WHATSAPP_STATUS_ROUTING_KEY": "whatsapp.status",
    }
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ publishing

async def publish(settings: Settings, n: int, *, rate: float | None = None, first: int = 0
                  ) -> None:
    """Publish n jobs (confirmed; message ids b-<first>...); at ``rate`` jobs/s with a publish
    timestamp header."""
    async with amqp.connect(BrokerAddress.from_settings(settings)) as conn:
        await amqp.declare_topology(conn, settings)
        async with conn.open_channel() as channel:
            start = trio.current_time()
            for i in range(first, first + n):
                if rate is not None:
                    await trio.sleep_until(start + (i - first) / rate)
                headers = {"published_at": repr(time.time())}
                await amqp.publish(channel, settings.exchange, settings.routing_key,
                                   BODY.encode(), Properties(message_id=f"b-{i}", headers=headers))


async def cleanup(settings: Settings) -> None:
    async with amqp.connect(BrokerAddress.from_settings(settings)) as conn, \
            conn.open_channel() as channel:
        for q in (settings.queue_name, settings.dlq_name,
                  *(amqp.retry_queue_name(settings, d) for d in set(settings.retry_delays)),
                  *(amqp.wait_queue_name(settings, d) for d in LADDER)):
            await channel.queue_delete(q)
        for x in (settings.exchange, settings.dlx):
            await channel.exchange_delete(x)


# ------------------------------------------------------------------------- (a) aio-pika

def bench_aio_pika(queue: str, n: int, prefetch: int) -> float:
    import aio_pika

    async def main() -> float:
        connection = await aio_pika.connect_robust(BROKER)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            q = await channel.declare_queue(queue, durable=True, passive=True)
            first = last = 0.0
            count = 0
            done = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal first, last, count
                if count == 0:
                    first = time.perf_counter()
                await message.ack()
                count += 1
                if count == n:
                    last = time.perf_counter()
                    done.set()

            await q.consume(on_message)
            await done.wait()
            return (n - 1) / (last - first)

    return asyncio.run(main())


# --------------------------------------------------------------------------- (b) serena

def bench_serena(settings: Settings, n: int, prefetch: int) -> float:
    async def main() -> float:
        async with amqp.connect(BrokerAddress.from_settings(settings)) as conn, \
                amqp.consume_channel(conn, prefetch=prefetch) as channel, \
                amqp.consume(channel, settings.queue_name) as deliveries:
            count = 0
            first = 0.0
            async for delivery in deliveries:
                if count == 0:
                    first = time.perf_counter()
                await delivery.ack()
                count += 1
                if count == n:
                    return (n - 1) / (time.perf_counter() - first)
        raise RuntimeError("consumer ended early")

    return trio.run(main)


# ----------------------------------------------------------------------- (c) the worker

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (stable where wall-clock rates are not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_healthy(port: int, timeout: float = 60) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("worker never became healthy")


def records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the dry-run file (a line being written is left for later)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def count_sent(path: Path) -> int:
    """Cheap progress poll (a newline count; no parsing while the worker runs)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_worker(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "wa_trio", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(int(env["HTTP_PORT"]))
    return proc, time.perf_counter() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_worker(n: int, prefetch: int, tmp: Path, **extra: str) -> dict[str, float]:
    queue = f"bench.{uuid.uuid4().hex[:8]}.worker{prefetch}"
    env = env_for(queue, tmp, WHATSAPP_PREFETCH_COUNT=str(prefetch), **extra)
    settings = Settings.from_env(env)
    trio.run(publish, settings, n)
    proc, startup = start_worker(env)
    try:
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        cpu_before = cpu_seconds(proc.pid)
        deadline = time.monotonic() + 600
        while count_sent(path) < n and time.monotonic() < deadline:
            time.sleep(0.25)
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        sent = records(path)
        rss_after = rss_mb(proc.pid)
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    times = sorted(r["sent_at"] for r in sent)
    return {"jobs_per_s": (len(times) - 1) / (times[-1] - times[0]), "sent": len(sent),
            "startup_s": startup, "rss_after_mb": rss_after,
            "cpu_us_per_job": cpu_used / max(1, len(sent)) * 1e6}


def compare(ref: str, n: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """CPU per job of this checkout against git ``ref`` (a worktree of it, imported first via
    PYTHONPATH), in one run, A and B alternating ``rounds`` times at prefetch 100: the
    regression check of a refactor (issue 29). Medians, and B/A."""
    old = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), ref],
                   check=True, capture_output=True)
    runs: dict[str, list[float]] = {"this": [], ref: []}
    try:
        for _ in range(rounds):
            runs["this"].append(bench_worker(n, 100, tmp)["cpu_us_per_job"])
            runs[ref].append(bench_worker(n, 100, tmp, PYTHONPATH=str(old / "src"))
                             ["cpu_us_per_job"])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       check=False, capture_output=True)
    this, base = statistics.median(runs["this"]), statistics.median(runs[ref])
    return {"cpu_us_per_job": runs, "median_this": this, "median_baseline": base,
            "this_over_baseline": this / base}


def quorum_cost(n: int, rounds: int, tmp: Path, **extra: str) -> dict[str, Any]:
    """WHATSAPP_QUEUE_TYPE=quorum against classic (issue 34), alternating ``rounds`` times at
    prefetch 100 in one run: medians of jobs/s and CPU per job, and quorum/classic. ``extra``:
    more settings (RABBITMQ_URL of a cluster: ``cluster_quorum_cost``)."""
    runs: dict[str, list[dict[str, float]]] = {"classic": [], "quorum": []}
    for _ in range(rounds):
        for kind in runs:
            runs[kind].append(bench_worker(n, 100, tmp, WHATSAPP_QUEUE_TYPE=kind, **extra))
    med = {kind: {m: statistics.median(r[m] for r in rs) for m in ("jobs_per_s", "cpu_us_per_job")}
           for kind, rs in runs.items()}
    return {"runs": runs, "median": med,
            "quorum_over_classic_rate": med["quorum"]["jobs_per_s"] / med["classic"]["jobs_per_s"],
            "quorum_over_classic_cpu":
                med["quorum"]["cpu_us_per_job"] / med["classic"]["cpu_us_per_job"]}


def cluster_quorum_cost(n: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """``quorum_cost`` on a three-node cluster of the bench's own (the fault tests' fixture,
    free ports, never the machine's broker): a quorum queue replicated to three nodes against
    a classic queue on one, the worker given every node in RABBITMQ_URL."""
    sys.path.insert(0, str(ROOT))
    from tests.fault.cluster import three_nodes

    with three_nodes() as cluster:
        return {"nodes": 3, **quorum_cost(n, rounds, tmp, RABBITMQ_URL=cluster.url)}


API_KEY = "bench-key-0123456789abcdefghijkl"


def bench_api(n: int, tmp: Path, concurrency: int = 8) -> dict[str, float]:
    """The HTTP send API (issue 32) against the publish paths of ``wa-trio send``, in one run:
    (1) ``n`` POST /v1/messages over keep-alive connections (``concurrency`` at once) into a
    real worker; (2) ``job_publisher.publish_job`` per job, as ``wa-trio send`` does (a
    connection, the topology declared, one confirmed publish); (3) one channel, confirmed
    publishes in a loop (what ``wa_trio.client`` costs a service that keeps its connection).
    The worker's CPU per request includes its pipeline taking each job (dry-run)."""
    import httpx

    from wa_trio.bus.job_publisher import publish_job

    queue = f"bench.{uuid.uuid4().hex[:8]}.api"
    env = env_for(queue, tmp, WHATSAPP_API_KEYS=f"bench:{API_KEY}",
                  WHATSAPP_API_RATE="100000/s")
    settings = Settings.from_env(env)
    proc, _startup = start_worker(env)
    try:
        url = f"http://127.0.0.1:{env['HTTP_PORT']}"
        cpu_before = cpu_seconds(proc.pid)

        async def post_all() -> float:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                started = trio.current_time()
                counter = iter(range(n))

                async def poster() -> None:
                    for i in counter:
                        body = json.loads(BODY) | {"text_message": f"api {i}"}
                        response = await http.post(
                            "/v1/messages", json=body,
                            headers={"Authorization": f"Bearer {API_KEY}"})
                        assert response.status_code == 202, response.text

                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(poster)
                return n / (trio.current_time() - started)

        api_rate = trio.run(post_all)
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        deadline = time.monotonic() + 120
        while count_sent(path) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        api_cpu = (cpu_seconds(proc.pid) - cpu_before) / n * 1e6
    finally:
        stop(proc)
    per_job = max(50, n // 20)
    started = time.perf_counter()
    for i in range(per_job):
        trio.run(publish_job, settings, BODY.encode(), f"send-{i}")
    send_rate = per_job / (time.perf_counter() - started)
    started = time.perf_counter()
    trio.run(publish, settings, n)
    channel_rate = n / (time.perf_counter() - started)
    trio.run(cleanup, settings)
    return {"api_requests_per_s": api_rate, "api_worker_cpu_us_per_request": api_cpu,
            "send_cli_path_jobs_per_s": send_rate, "one_channel_jobs_per_s": channel_rate,
            "api_over_send_path": api_rate / send_rate,
            "api_over_one_channel": api_rate / channel_rate}


def burner() -> subprocess.Popen[bytes]:
    """A second process that burns one core (the 'busy host' of the latency row)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def bench_latency(rate: float, seconds: float, tmp: Path, *, loaded: bool = False
                  ) -> dict[str, float]:
    burn = burner() if loaded else None
    try:
        return _latency(rate, seconds, tmp)
    finally:
        if burn is not None:
            burn.kill()
            burn.wait()


def _latency(rate: float, seconds: float, tmp: Path) -> dict[str, float]:
    queue = f"bench.{uuid.uuid4().hex[:8]}.latency"
    env = env_for(queue, tmp, WHATSAPP_PREFETCH_COUNT="10")
    settings = Settings.from_env(env)
    n = int(rate * seconds)
    trio.run(publish, settings, 0)  # declare topology
    proc, _ = start_worker(env)
    try:
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        published: dict[str, float] = {}

        async def timed_publish() -> None:
            async with amqp.connect(BrokerAddress.from_settings(settings)) as conn, \
                    conn.open_channel() as channel:
                start = trio.current_time()
                for i in range(n):
                    await trio.sleep_until(start + i / rate)
                    published[f"l-{i}"] = time.time()
                    await amqp.publish(channel, settings.exchange, settings.routing_key,
                                       BODY.encode(), Properties(message_id=f"l-{i}"))

        trio.run(timed_publish)
        deadline = time.monotonic() + 60
        while count_sent(path) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        latencies = sorted((r["sent_at"] - published[r["job_key"]]) * 1000 for r in records(path))
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    q = statistics.quantiles(latencies, n=100)
    return {"offered_per_s": rate, "jobs": len(latencies), "p50_ms": q[49], "p99_ms": q[98]}


def bench_schedule(aheads: tuple[float, ...], tmp: Path, per: int = 20) -> dict[str, float]:
    """Jobs with ``send_at`` ``aheads`` seconds ahead (``per`` each): the send-time error, ms."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.schedule"
    env = env_for(queue, tmp, WHATSAPP_PREFETCH_COUNT="10")
    settings = Settings.from_env(env)
    trio.run(publish, settings, 0)  # declare topology
    proc, _ = start_worker(env)
    due: dict[str, tuple[float, float]] = {}
    try:
        async def scheduled_publish() -> None:
            async with amqp.connect(BrokerAddress.from_settings(settings)) as conn, \
                    conn.open_channel() as channel:
                for ahead in aheads:
                    for i in range(per):
                        when = time.time() + ahead
                        key = f"s-{ahead:g}-{i}"
                        due[key] = (ahead, when)
                        body = json.loads(BODY)
                        body["send_at"] = datetime.fromtimestamp(when, UTC).isoformat()
                        await amqp.publish(channel, settings.exchange, settings.routing_key,
                                           json.dumps(body).encode(), Properties(message_id=key))

        trio.run(scheduled_publish)
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        deadline = time.monotonic() + max(aheads) + 60
        while count_sent(path) < len(due) and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = {r["job_key"]: r["sent_at"] for r in records(path)}
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    result: dict[str, float] = {}
    for ahead in aheads:
        errors = sorted((sent[k] - when) * 1000 for k, (a, when) in due.items()
                        if a == ahead and k in sent)
        result[f"{ahead:g}s_p99_ms"] = statistics.quantiles(errors, n=100)[98] if len(
            errors) > 1 else float("nan")
        result[f"{ahead:g}s_sent"] = len(errors)
    return result


def idle_rss_neonize(tmp: Path) -> dict[str, float]:
    queue = f"bench.{uuid.uuid4().hex[:8]}.idle"
    env = env_for(queue, tmp, WHATSAPP_TRANSPORT="neonize",
                  WHATSAPP_PROXY=f"http://127.0.0.1:{free_port()}")  # closed: never leaves
    settings = Settings.from_env(env)
    proc, startup = start_worker(env)
    try:
        time.sleep(3)
        rss = rss_mb(proc.pid)
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    return {"idle_rss_mb": rss, "startup_s": startup}


def idle_cpu(tmp: Path, seconds: float) -> dict[str, float]:
    """CPU of a dry-run worker with nothing to do, as a share of one core."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.idlecpu"
    env = env_for(queue, tmp)
    settings = Settings.from_env(env)
    proc, _ = start_worker(env)
    try:
        time.sleep(2)  # start-up settles
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(proc.pid) - before
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    return {"seconds": seconds, "core_percent": used / seconds * 100}


def soak(first: int, total: int, tmp: Path) -> dict[str, float]:
    """RSS after ``first`` and after ``total`` jobs through one dry-run worker, and the ledger's
    size on disk per million jobs (pruning on: the default 7-day window keeps them all here, so
    this is the size a week of that traffic takes)."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.soak"
    env = env_for(queue, tmp, WHATSAPP_PREFETCH_COUNT="100", WHATSAPP_STATUS_ROUTING_KEY="",
                  WHATSAPP_DRY_RUN_FILE="")
    settings = Settings.from_env(env)
    trio.run(publish, settings, 0)
    proc, _ = start_worker(env)
    port = int(env["HTTP_PORT"])

    def processed() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith('worker_jobs_processed_total{status="success"'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_count(n: int) -> None:
        deadline = time.monotonic() + 3600
        while processed() < n and time.monotonic() < deadline:
            time.sleep(1.0)

    try:
        trio.run(publish, settings, first)
        wait_for_count(first)
        time.sleep(1.5)  # /metrics is cached 1 s
        rss_first = rss_mb(proc.pid)
        sent = first
        while sent < total:
            chunk = min(100_000, total - sent)
            trio.run(functools.partial(publish, settings, chunk, first=sent))
            sent += chunk
            wait_for_count(sent)
        time.sleep(1.5)
        rss_total = rss_mb(proc.pid)
        ledger = sum(f.stat().st_size for f in Path(env["WHATSAPP_SESSION_PATH"]).glob("ledger.db*"))
    finally:
        stop(proc)
        trio.run(cleanup, settings)
    return {"first": first, "total": total, "rss_first_mb": rss_first,
            "rss_total_mb": rss_total, "ledger_mb_per_million": ledger / total * 1e6 / 1e6}


def bench_media_fanout(recipients: int, tmp: Path) -> dict[str, float]:
    """One image to ``recipients`` people: how many fetches and uploads (goal: 1 and 1)."""
    import base64
    import http.server
    import threading

    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    hits = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[0] += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    queue = f"bench.{uuid.uuid4().hex[:8]}.media"
    env = env_for(queue, tmp, WHATSAPP_PREFETCH_COUNT="100", WHATSAPP_MEDIA_ALLOW_PRIVATE="on")
    settings = Settings.from_env(env)
    url = f"http://127.0.0.1:{server.server_address[1]}/menu.png"
    bodies = [json.dumps({"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
                          "destination": f"+55119{n:08d}",
                          "media": {"kind": "image", "url": url}}).encode()
              for n in range(recipients)]

    async def publish_media() -> None:
        async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
            await amqp.declare_topology(connection, settings)
            async with connection.open_channel() as channel:
                for body in bodies:
                    await amqp.publish(channel, settings.exchange, settings.routing_key, body,
                                       Properties(message_id=str(uuid.uuid4())))

    trio.run(publish_media)
    proc, _ = start_worker(env)
    try:
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        deadline = time.monotonic() + 300
        while count_sent(path) < recipients and time.monotonic() < deadline:
            time.sleep(0.25)
        sent = records(path)
    finally:
        stop(proc)
        server.shutdown()
        trio.run(cleanup, settings)
    uploads = sum(1 for r in sent if r.get("media", {}).get("uploaded"))
    times = sorted(r["sent_at"] for r in sent)
    return {"recipients": recipients, "sent": len(sent), "fetches": hits[0], "uploads": uploads,
            "jobs_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0}


def spread_body(i: int, recipients: int) -> bytes:
    body = json.loads(BODY)
    body["destination"] = f"+5511999{i % recipients:06d}"
    return json.dumps(body).encode()


async def publish_bodies(settings: Settings, bodies: list[bytes], prefix: str) -> None:
    async with amqp.connect(BrokerAddress.from_settings(settings)) as conn:
        await amqp.declare_topology(conn, settings)
        async with conn.open_channel() as channel:
            for i, body in enumerate(bodies):
                await amqp.publish(channel, settings.exchange, settings.routing_key, body,
                                   Properties(message_id=f"{prefix}-{i}"))


def pool_spread(jobs: int, recipients: int, tmp: Path) -> dict[str, Any]:
    """3 dry-run accounts, ``jobs`` pool jobs to ``recipients`` recipients: how evenly the
    pool spreads them, and whether each recipient stays with one account."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.pool"
    env = env_for(queue, tmp, WHATSAPP_ACCOUNTS="a,b,c", WHATSAPP_PREFETCH_COUNT="100")
    settings = Settings.from_env(env)
    proc, _ = start_worker(env)
    try:
        trio.run(publish_bodies, settings, [spread_body(i, recipients) for i in range(jobs)], "p")
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        deadline = time.monotonic() + 300
        while count_sent(path) < jobs and time.monotonic() < deadline:
            time.sleep(0.25)
        sent = records(path)
    finally:
        stop(proc)
        for each in (settings, *(settings.for_account(a) for a in settings.accounts)):
            trio.run(cleanup, each)
    per_account: dict[str, int] = {}
    owners: dict[str, set[str]] = {}
    for record in sent:
        per_account[record["account"]] = per_account.get(record["account"], 0) + 1
        owners.setdefault(record["destination"], set()).add(record["account"])
    counts = sorted(per_account.values())
    return {"jobs": jobs, "recipients": recipients, "sent": len(sent), "per_account": per_account,
            "max_over_min": counts[-1] / counts[0] if counts else float("nan"),
            "recipients_on_one_account": sum(len(v) == 1 for v in owners.values())}


def accounts_rss(counts: tuple[int, ...], tmp: Path) -> dict[str, float]:
    """RSS of a worker running N neonize accounts (clients created and connecting through a
    closed loopback proxy), after 5 s."""
    out: dict[str, float] = {}
    for count in counts:
        queue = f"bench.{uuid.uuid4().hex[:8]}.rss{count}"
        names = ",".join(f"acct-{i}" for i in range(count))
        env = env_for(queue, tmp, WHATSAPP_TRANSPORT="neonize", WHATSAPP_ACCOUNTS=names,
                      WHATSAPP_PROXY=f"http://127.0.0.1:{free_port()}")
        settings = Settings.from_env(env)
        proc, _ = start_worker(env)
        try:
            time.sleep(5)
            out[f"rss_{count}_mb"] = rss_mb(proc.pid)
        finally:
            stop(proc)
            for each in (settings, *(settings.for_account(a) for a in settings.accounts)):
                trio.run(cleanup, each)
    low, high = min(counts), max(counts)
    out["per_extra_account_mb"] = (out[f"rss_{high}_mb"] - out[f"rss_{low}_mb"]) / (high - low)
    return out


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable"


@contextlib.contextmanager
def scratch_store() -> Iterator[str]:
    """A database of the bench's own on the machine's PostgreSQL (its WHATSAPP_STORE URL),
    dropped afterwards."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}?sslmode=disable"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stop_and_clean(procs: list[subprocess.Popen[bytes]], settings: Settings) -> None:
    """Stop the workers still running, then delete the queues of every account."""
    for proc in procs:
        if proc.poll() is None:
            stop(proc)
    for name in settings.accounts if settings.multi_account else ():
        trio.run(cleanup, settings.for_account(name))
    trio.run(cleanup, settings)


def failover_postgres(jobs: int, tmp: Path) -> dict[str, float]:
    """Two replicas on a PostgreSQL store of their own (the machine's server), one account,
    ``jobs`` jobs paced at 400/s; kill -9 of the holder after a quarter: seconds to the
    standby's first send, jobs sent twice, jobs lost."""
    with scratch_store() as store:
        queue = f"bench.{uuid.uuid4().hex[:8]}.failover"
        env = env_for(queue, tmp, WHATSAPP_STORE=store, WHATSAPP_PREFETCH_COUNT="10",
                      WHATSAPP_RATE_LIMIT="400/s", WHATSAPP_RATE_BURST="1")
        settings = Settings.from_env(env)
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        first, _ = start_worker(env)
        second_env = {**env, "HTTP_PORT": str(free_port()),
                      "WHATSAPP_SESSION_PATH": env["WHATSAPP_SESSION_PATH"] + "-b"}
        second = subprocess.Popen([sys.executable, "-m", "wa_trio", "run"],
                                  env={**os.environ, **second_env}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)
            trio.run(publish, settings, jobs)
            while count_sent(path) < jobs // 4:
                time.sleep(0.01)
            first.kill()
            killed = time.time()
            first.wait()
            at_kill = count_sent(path)
            deadline = time.monotonic() + 300
            while count_sent(path) < jobs and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)
            sent = records(path)
        finally:
            stop_and_clean([first, second], settings)
    keys = [r["job_key"] for r in sent]
    after = [r["sent_at"] for r in sent[at_kill:]]
    return {"jobs": jobs, "takeover_s": (min(after) - killed) if after else float("nan"),
            "sent_twice": len(keys) - len(set(keys)), "lost": jobs - len(set(keys))}


def report(bench: Callable[[Path], dict[str, Any]],
           table: Callable[[dict[str, Any]], list[str]]) -> None:
    """Run one bench of its own in a scratch folder; print its figures and its table."""
    with tempfile.TemporaryDirectory() as tmpdir:
        result = bench(Path(tmpdir))
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true",
                        help="3,000 jobs, prefetch 100 only, 3 s of latency, a 10,000-job soak "
                             "(about 2 minutes)")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--compare", metavar="GIT_REF",
                        help="only compare CPU per job of this checkout with GIT_REF's code "
                             "(alternating runs at prefetch 100; e.g. --compare HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--api", action="store_true",
                        help="only the HTTP send API against the publish paths of wa-trio send")
    parser.add_argument("--cloud", action="store_true",
                        help="only the Cloud API route at Meta's top tier against bare httpx "
                             "(bench/cloud.py)")
    parser.add_argument("--quorum", action="store_true",
                        help="only quorum queues against classic, alternating --rounds times")
    parser.add_argument("--cluster", action="store_true",
                        help="with --quorum: on a three-node cluster the bench starts itself")
    parser.add_argument("--replicas", action="store_true",
                        help="only two replicas on PostgreSQL: rolling restarts and kills -9 "
                             "under load (bench/replicas.py)")
    parser.add_argument("--rebalance", action="store_true",
                        help="only 20 accounts over 3 replicas: joins, a leave, a rejoin under "
                             "load, and the connections per replica (bench/rebalance.py)")
    parser.add_argument("--many", action="store_true",
                        help="only one process of 200 accounts on PostgreSQL under load: its "
                             "connections at their most (bench/rebalance.py)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.latency_seconds = min(args.jobs, 3000), 3.0
    n = args.jobs
    if args.quorum:
        with tempfile.TemporaryDirectory() as tmpdir:
            cost = cluster_quorum_cost if args.cluster else quorum_cost
            print(json.dumps(cost(n, args.rounds, Path(tmpdir)), indent=2))
        return
    if args.replicas:
        import replicas  # bench/replicas.py

        report(replicas.bench_replicas, replicas.table)
        return
    if args.many:
        import rebalance  # bench/rebalance.py

        with tempfile.TemporaryDirectory() as tmpdir:
            print(json.dumps(rebalance.many_accounts(Path(tmpdir), 200), indent=2))
        return
    if args.rebalance:
        import rebalance  # bench/rebalance.py

        report(rebalance.bench_rebalance, rebalance.table)
        return
    if args.cloud:
        import cloud  # bench/cloud.py (it imports this module's helpers)

        report(functools.partial(cloud.bench_cloud, n), cloud.table)
        return
    if args.api:
        with tempfile.TemporaryDirectory() as tmpdir:
            print(json.dumps(bench_api(n, Path(tmpdir)), indent=2))
        return
    if args.compare:
        with tempfile.TemporaryDirectory() as tmpdir:
            result = compare(args.compare, n, args.rounds, Path(tmpdir))
        print(json.dumps(result, indent=2))
        return
    prefetches = (100,) if args.quick else (1, 10, 100)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "jobs": n,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        base = Settings.from_env(env_for(f"bench.{uuid.uuid4().hex[:8]}.bare", tmp))
        for name, fn in (("aio_pika", lambda: bench_aio_pika(base.queue_name, n, 100)),
                         ("serena", lambda: bench_serena(base, n, 100))):
            trio.run(publish, base, n)
            cpu_before = cpu_seconds(os.getpid())
            results[f"bare_{name}_jobs_per_s"] = fn()
            cpu_used = cpu_seconds(os.getpid()) - cpu_before
            results[f"bare_{name}_cpu_us_per_job"] = cpu_used / n * 1e6
            print(f"bare {name}: {results[f'bare_{name}_jobs_per_s']:.0f} jobs/s, "
                  f"{results[f'bare_{name}_cpu_us_per_job']:.0f} us CPU/job", flush=True)
        trio.run(cleanup, base)
        for prefetch in prefetches:
            r = bench_worker(n, prefetch, tmp)
            results[f"worker_p{prefetch}"] = r
            print(f"wa-trio prefetch {prefetch}: {r['jobs_per_s']:.0f} jobs/s, "
                  f"{r['cpu_us_per_job']:.0f} us CPU/job (rss after {r['rss_after_mb']:.0f} MB)",
                  flush=True)
        r = bench_worker(n, 100, tmp, WHATSAPP_STATUS_ROUTING_KEY="")
        results["worker_p100_no_status"] = r
        print(f"wa-trio prefetch 100, status events off: {r['jobs_per_s']:.0f} jobs/s", flush=True)
        results["latency"] = bench_latency(200.0, args.latency_seconds, tmp)
        print(f"latency at 200/s: {results['latency']}", flush=True)
        results["latency_loaded"] = bench_latency(200.0, args.latency_seconds, tmp, loaded=True)
        print(f"latency at 200/s, one core burnt: {results['latency_loaded']}", flush=True)
        results["idle_cpu"] = idle_cpu(tmp, 5.0 if args.quick else 60.0)
        print(f"idle CPU: {results['idle_cpu']}", flush=True)
        first, total = (3_000, 10_000) if args.quick else (100_000, 1_000_000)
        results["soak"] = soak(first, total, tmp)
        print(f"soak: {results['soak']}", flush=True)
        aheads = (2.0,) if args.quick else (2.0, 30.0, 300.0)
        results["schedule"] = bench_schedule(aheads, tmp)
        print(f"scheduled sends: {results['schedule']}", flush=True)
        results["media"] = bench_media_fanout(1000, tmp)
        print(f"media fan-out: {results['media']}", flush=True)
        results["idle"] = idle_rss_neonize(tmp)
        print(f"idle (neonize loaded): {results['idle']}", flush=True)
        results["pool"] = pool_spread(3000, 300, tmp)
        print(f"pool spread: {results['pool']}", flush=True)
        results["accounts_rss"] = accounts_rss((1, 5) if args.quick else (1, 5, 20), tmp)
        print(f"accounts RSS: {results['accounts_rss']}", flush=True)
        results["failover"] = failover_postgres(2000, tmp)
        print(f"failover on PostgreSQL: {results['failover']}", flush=True)
    base_rate = results["bare_aio_pika_jobs_per_s"]
    rows = [
        ("bare aio-pika consumer (asyncio, prefetch 100)", base_rate,
         results["bare_aio_pika_cpu_us_per_job"]),
        ("bare serena consumer (trio, prefetch 100)", results["bare_serena_jobs_per_s"],
         results["bare_serena_cpu_us_per_job"]),
        *((f"wa-trio full pipeline, prefetch {p}", results[f"worker_p{p}"]["jobs_per_s"],
           results[f"worker_p{p}"]["cpu_us_per_job"]) for p in prefetches),
        ("wa-trio full pipeline, prefetch 100, status events off",
         results["worker_p100_no_status"]["jobs_per_s"],
         results["worker_p100_no_status"]["cpu_us_per_job"]),
    ]
    serena_rate = results["bare_serena_jobs_per_s"]
    full = results["worker_p100"]["jobs_per_s"]
    lat = results["latency"]
    idle = results["idle"]
    loaded = results["latency_loaded"]
    soaked = results["soak"]

    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    table = [
        f"Run {results['when']} on {results['machine']}, {n} jobs.", "",
        "| Consumer | jobs/s | vs aio-pika | CPU us/job |", "|---|---:|---:|---:|",
        *(f"| {name} | {rate:,.0f} | {rate / base_rate:.2f}x | {cpu:,.0f} |"
          for name, rate, cpu in rows),
        "", "| Target | Value | Met |", "|---|---:|---|",
        f"| full pipeline (prefetch 100) vs bare serena >= 0.8x | {full / serena_rate:.2f}x | "
        f"{'met' if full / serena_rate >= 0.8 else 'missed'} |",
        f"| bare serena vs aio-pika >= 0.9x | {serena_rate / base_rate:.2f}x | "
        f"{'met' if serena_rate / base_rate >= 0.9 else 'missed'} |",
        "", "| Measure | Value | Target |", "|---|---:|---:|",
        f"| publish -> send latency p50 at {lat['offered_per_s']:.0f} jobs/s | "
        f"{lat['p50_ms']:.2f} ms | |",
        f"| publish -> send latency p99 at {lat['offered_per_s']:.0f} jobs/s | "
        f"{lat['p99_ms']:.2f} ms | <= 10 ms: {met(lat['p99_ms'] <= 10)} |",
        f"| same, with one core burnt by another process: p50 / p99 | "
        f"{loaded['p50_ms']:.2f} / {loaded['p99_ms']:.2f} ms | p99 <= 25 ms: "
        f"{met(loaded['p99_ms'] <= 25)} |",
        f"| idle worker CPU over {results['idle_cpu']['seconds']:.0f} s | "
        f"{results['idle_cpu']['core_percent']:.2f} % of a core | < 1 %: "
        f"{met(results['idle_cpu']['core_percent'] < 1)} |",
        f"| RSS after {soaked['first']:,} / {soaked['total']:,} jobs | "
        f"{soaked['rss_first_mb']:.0f} / {soaked['rss_total_mb']:.0f} MB | growth < 10 MB: "
        f"{met(soaked['rss_total_mb'] - soaked['rss_first_mb'] < 10)} |",
        f"| ledger on disk per million jobs | {soaked['ledger_mb_per_million']:.0f} MB | |",
        *(f"| send_at {a:g} s ahead: p99 send-time error | "
          f"{results['schedule'][f'{a:g}s_p99_ms']:.0f} ms | < 1000 ms |" for a in aheads),
        f"| media fan-out: one image to {results['media']['recipients']} recipients, "
        f"fetches / uploads | {results['media']['fetches']} / {results['media']['uploads']} "
        "| 1 / 1 |",
        f"| RSS idle, neonize loaded | {idle['idle_rss_mb']:.0f} MB | <= 150 MB |",
        f"| RSS after {n} jobs (prefetch 100, dry-run) | "
        f"{results['worker_p100']['rss_after_mb']:.0f} MB | |",
        f"| start -> /healthz 200 (neonize) | {idle['startup_s']:.2f} s | <= 2 s |",
        f"| start -> /healthz 200 (dry-run) | {results['worker_p100']['startup_s']:.2f} s | |",
        f"| pool: {results['pool']['jobs']:,} jobs to {results['pool']['recipients']} "
        f"recipients over 3 accounts: busiest / quietest account | "
        f"{results['pool']['max_over_min']:.2f}x | <= 1.2x: "
        f"{met(results['pool']['max_over_min'] <= 1.2)} |",
        f"| pool: recipients served by one account | "
        f"{results['pool']['recipients_on_one_account']} / {results['pool']['recipients']} | "
        "all |",
        *(f"| RSS with {k.split('_')[1]} neonize account(s) | {v:.0f} MB | |"
          for k, v in results["accounts_rss"].items() if k.startswith("rss_")),
        f"| RSS per extra neonize account | "
        f"{results['accounts_rss']['per_extra_account_mb']:.1f} MB | <= 25 MB: "
        f"{met(results['accounts_rss']['per_extra_account_mb'] <= 25)} |",
        f"| failover on PostgreSQL: kill -9 of the holder mid {results['failover']['jobs']:,} "
        f"jobs -> standby's first send | {results['failover']['takeover_s']:.2f} s | < 5 s: "
        f"{met(results['failover']['takeover_s'] < 5)} |",
        f"| failover: jobs sent twice / lost | {results['failover']['sent_twice']} / "
        f"{results['failover']['lost']} | <= 1 / 0 |",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{stamp}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
