"""Many accounts over several replicas (issue 34): ``python bench/run.py --rebalance``.

Three ``wa-trio run`` processes of the same 20 dry-run accounts on a PostgreSQL database of
the bench's own, pool jobs to 400 recipients at 200/s throughout (about 10 a second per
account). In turn: replica 1 alone (it takes all 20); replica 2 joins (10 + 10); replica 3
joins (7 + 7 + 6); replica 2 stops by SIGTERM (10 + 10); replica 2 starts again (7 + 7 + 6).
Measured: the time from each event until the replicas hold their shares (``wa_trio_accounts_held``
from each one's /metrics), the longest pause any account had in its sends around each event
(a move is a drain, a release and a start elsewhere), the jobs sent twice and lost over the
run, and the connections each replica holds once balanced (AMQP and PostgreSQL sockets from
/proc, open files). Then one process with 200 dry-run accounts on the SQLite files: its AMQP
connections.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import trio
from run import ROOT, env_for, free_port, records, scratch_store, stop_and_clean  # bench/run.py

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.config.settings import Settings

sys.path.insert(0, str(ROOT))
from tests.helpers import tcp_peers  # noqa: E402 - the repository's root, just put on the path

RATE = 200.0
ACCOUNTS = 20
RECIPIENTS = 400


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A replica; its stderr appended to ``<session>.stderr`` (read it when one exits)."""
    log = open(f"{env['WHATSAPP_SESSION_PATH']}.stderr", "ab")  # noqa: SIM115 - the child's
    return subprocess.Popen([sys.executable, "-m", "wa_trio", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=log)


async def publish_spread(settings: Settings, n: int, rate: float) -> None:
    """``n`` pool jobs at ``rate`` a second, to ``RECIPIENTS`` recipients in turn."""
    async with amqp.connect(BrokerAddress.from_settings(settings)) as conn:
        await amqp.declare_topology(conn, settings)
        async with conn.open_channel() as channel:
            start = trio.current_time()
            for i in range(n):
                await trio.sleep_until(start + i / rate)
                body = json.dumps({"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f",
                                   "text_message": f"job {i}",
                                   "destination": f"+55119{i % RECIPIENTS:08d}"})
                await amqp.publish(channel, settings.exchange, settings.routing_key,
                                   body.encode(), Properties(message_id=f"r-{i}"))


async def _held(port: int) -> int | None:
    try:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
    except httpx.HTTPError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("wa_trio_accounts_held")]
    return int(sum(values)) if values else None


async def _until(ports: list[int], shares: list[int], timeout: float = 60.0) -> float:
    """Seconds until the replicas on ``ports`` hold ``shares`` (in any order)."""
    start = time.time()
    with trio.move_on_after(timeout):
        while True:
            held = [await _held(port) for port in ports]
            if None not in held and sorted(held, reverse=True) == shares:  # type: ignore[type-var]
                return time.time() - start
            await trio.sleep(0.05)
    return float("nan")


def _all(paths: list[Path]) -> list[dict[str, Any]]:
    return [record for path in paths for record in records(path)]


def handoffs(paths: list[Path]) -> list[float]:
    """Per move of an account between replicas (each replica writes its own dry-run file):
    the old holder's last send of it before the new holder's first, to that first."""
    sends = sorted((r["sent_at"], r["account"], n) for n, path in enumerate(paths)
                   for r in records(path))
    last: dict[str, tuple[float, int]] = {}
    gaps = []
    for at, account, replica in sends:
        if account in last and last[account][1] != replica:
            gaps.append(at - last[account][0])
        last[account] = (at, replica)
    return gaps


def _pauses(paths: list[Path], since: float, until: float) -> list[float]:
    """Per account: its longest pause between two sends within [since, until]."""
    by_account: dict[str, list[float]] = defaultdict(list)
    for record in _all(paths):
        if since <= record["sent_at"] <= until:
            by_account[record["account"]].append(record["sent_at"])
    return [max((b - a for a, b in zip(sorted(t), sorted(t)[1:], strict=False)), default=0.0)
            for t in by_account.values()]


def _connections(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    return {"amqp": len(tcp_peers(proc.pid, 5672)), "postgresql": len(tcp_peers(proc.pid, 5432)),
            "open_files": len(os.listdir(f"/proc/{proc.pid}/fd"))}


def bench_rebalance(tmp: Path) -> dict[str, Any]:
    queue = f"bench.{uuid.uuid4().hex[:8]}.spread"
    names = ",".join(f"a{n:02d}" for n in range(ACCOUNTS))
    jobs = int(RATE * 75)
    out: dict[str, Any] = {"jobs": jobs, "accounts": ACCOUNTS}
    with scratch_store() as store:
        env = env_for(queue, tmp, WHATSAPP_STORE=store, WHATSAPP_ACCOUNTS=names,
                      WHATSAPP_PREFETCH_COUNT="10", WHATSAPP_RATE_LIMIT="400/s",
                      WHATSAPP_RATE_BURST="1")
        settings = Settings.from_env(env)
        envs = [{**env, "HTTP_PORT": str(free_port()),
                 "WHATSAPP_DRY_RUN_FILE": f"{env['WHATSAPP_DRY_RUN_FILE']}-{n}",
                 "WHATSAPP_SESSION_PATH": f"{env['WHATSAPP_SESSION_PATH']}-{n}"} for n in range(3)]
        paths = [Path(e["WHATSAPP_DRY_RUN_FILE"]) for e in envs]
        ports = [int(e["HTTP_PORT"]) for e in envs]
        procs: list[subprocess.Popen[bytes]] = []

        async def event(name: str, live: list[int], shares: list[int]) -> None:
            at = time.time()
            out[f"{name}_s"] = await _until([ports[n] for n in live], shares)
            await trio.sleep(1.0)
            pauses = _pauses(paths, at - 0.5, time.time())
            out[f"{name}_pause_max_s"] = max(pauses, default=float("nan"))
            out[f"{name}_pause_median_s"] = statistics.median(pauses) if pauses else float("nan")

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_spread, settings, jobs, RATE)
                procs.append(_spawn(envs[0]))
                out["alone_s"] = await _until([ports[0]], [20])
                quiet = time.time()
                await trio.sleep(4.0)  # the baseline: no event
                steady = _pauses(paths, quiet, time.time())
                out["steady_pause_max_s"] = max(steady, default=float("nan"))
                out["steady_pause_median_s"] = statistics.median(steady) if steady else 0.0
                procs.append(_spawn(envs[1]))
                await event("join_2", [0, 1], [10, 10])
                await trio.sleep(3.0)
                procs.append(_spawn(envs[2]))
                await event("join_3", [0, 1, 2], [7, 7, 6])
                await trio.sleep(2.0)
                exited = [(n, p.returncode) for n, p in enumerate(procs) if p.poll() is not None]
                if exited:
                    for n, _ in exited:
                        print(Path(f"{envs[n]['WHATSAPP_SESSION_PATH']}.stderr").read_text()[-3000:])
                    raise RuntimeError(f"replicas exited: {exited}")
                out["connections"] = [_connections(p) for p in procs]
                procs[1].send_signal(signal.SIGTERM)
                await event("leave", [0, 2], [10, 10])
                await trio.to_thread.run_sync(procs[1].wait)
                await trio.sleep(3.0)
                procs[1] = _spawn(envs[1])
                await event("rejoin", [0, 1, 2], [7, 7, 6])

        try:
            trio.run(run)
            deadline = time.monotonic() + 120
            while len(_all(paths)) < jobs and time.monotonic() < deadline:
                time.sleep(0.5)
            keys = [r["text_message"] for r in _all(paths)]
            gaps = handoffs(paths)
        finally:
            stop_and_clean(procs, settings)
    out["handoffs"] = len(gaps)
    out["handoff_median_s"] = statistics.median(gaps) if gaps else float("nan")
    out["handoff_p90_s"] = sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else float("nan")
    out["handoff_max_s"] = max(gaps, default=float("nan"))
    out["sent_twice"] = len(keys) - len(set(keys))
    out["lost"] = jobs - len(set(keys))
    out["many_accounts_one_process"] = many_accounts(tmp, 200)
    return out


def many_accounts(tmp: Path, accounts: int, rate: float = 50.0, seconds: float = 20.0
                  ) -> dict[str, Any]:
    """One process with ``accounts`` dry-run accounts on the PostgreSQL store: how long until
    every account consumes, then ``seconds`` of pool jobs at ``rate``/s: its AMQP and
    PostgreSQL connections at their most (sampled every 0.25 s, from /proc and from the
    server by ``application_name``), its open files, its CPU per job, every job sent once."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.many"
    names = [f"m{n:03d}" for n in range(accounts)]
    jobs = int(rate * seconds)
    with scratch_store() as store:
        env = env_for(queue, tmp, WHATSAPP_STORE=store, WHATSAPP_ACCOUNTS=",".join(names),
                      WHATSAPP_RATE_LIMIT="400/s", WHATSAPP_RATE_BURST="1")
        settings = Settings.from_env(env)
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        started = time.monotonic()
        proc = _spawn(env)
        most: dict[str, Any] = {"amqp": 0, "postgresql": 0, "open_files": 0}
        by_name: dict[str, int] = {}
        out: dict[str, Any] = {"accounts": accounts, "jobs": jobs, "rate": rate}

        async def sample() -> None:
            while True:
                now = _connections(proc)
                for key in most:
                    most[key] = max(most[key], now[key])
                server = await trio.to_thread.run_sync(_backends_by_name, store)
                if sum(server.values()) >= sum(by_name.values()):
                    by_name.clear()
                    by_name.update(server)
                await trio.sleep(0.25)

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                wanted = {f"{queue}.{name}" for name in names}
                while len(wanted & await trio.to_thread.run_sync(_consumed)) < accounts:
                    await trio.sleep(0.5)
                out["all_consuming_after_s"] = round(time.monotonic() - started, 1)
                cpu = _cpu_seconds(proc)
                await publish_spread(settings, jobs, rate)
                deadline = trio.current_time() + 120
                while len(records(path)) < jobs and trio.current_time() < deadline:
                    await trio.sleep(0.5)
                out["cpu_per_job_ms"] = round((_cpu_seconds(proc) - cpu) / jobs * 1000, 2)
                nursery.cancel_scope.cancel()

        try:
            trio.run(run)
            keys = [r["text_message"] for r in records(path)]
        finally:
            stop_and_clean([proc], settings)
    return {**out, "sent_once": len(set(keys)), "sent_twice": len(keys) - len(set(keys)),
            **{f"most_{k}": v for k, v in most.items()}, "server_backends_at_most": by_name}


def _consumed() -> set[str]:
    """The queues of the machine's broker that have a consumer."""
    listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "name", "consumers"],
                            capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines()
            if len(line.split()) == 2 and line.split()[1] != "0"}


def _cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backends_by_name(store: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(store, autocommit=True) as db:
        rows = db.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {str(name): int(n) for name, n in rows}


def table(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['accounts']} accounts over 3 replicas, {r['jobs']:,} pool jobs at "
             f"{RATE:.0f}/s", "",
             "| Event | balanced after | longest pause of an account (max / median) |",
             "|---|---:|---:|"]
    lines.append(f"| none (replica 1 alone, 4 s) | | {r['steady_pause_max_s']:.2f} s / "
                 f"{r['steady_pause_median_s']:.2f} s |")
    for name, said in (("join_2", "replica 2 joins: 20 -> 10 + 10"),
                       ("join_3", "replica 3 joins: -> 7 + 7 + 6"),
                       ("leave", "replica 2 stops (SIGTERM): -> 10 + 10"),
                       ("rejoin", "replica 2 starts again: -> 7 + 7 + 6")):
        lines.append(f"| {said} | {r[name + '_s']:.2f} s | {r[name + '_pause_max_s']:.2f} s / "
                     f"{r[name + '_pause_median_s']:.2f} s |")
    lines += ["", f"{r['handoffs']} hand-offs of an account (its old holder's last send -> its "
              f"new holder's first): median {r['handoff_median_s']:.3f} s, p90 "
              f"{r['handoff_p90_s']:.3f} s, max {r['handoff_max_s']:.3f} s",
              "", f"sent twice {r['sent_twice']}, lost {r['lost']}; connections once balanced "
              f"(per replica): {r['connections']}; one process of 200 accounts on the PostgreSQL store: "
              f"{r['many_accounts_one_process']}"]
    return lines
