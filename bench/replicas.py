"""Replicas on PostgreSQL under load (issue 34): ``python bench/run.py --replicas``.

Two ``wa-trio run`` processes of one account (dry-run transport, one dry-run file) on a
database of the bench's own; jobs published at a steady rate throughout. Then, in turn:
  - rolling restarts: SIGTERM to the holder (it drains and releases the lease; the standby
    is queued for it at the server), then the stopped replica starts again as the standby;
  - kill -9 of the holder, then the killed replica starts again as the standby.
Measured from the dry-run file (each send's ``sent_at``): the gap in sends around each event
(the hand-off: the old holder's last send to the new holder's first), the time from a kill to
the first send after it, and over the whole run the jobs sent twice and the jobs lost.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from run import (  # bench/run.py
    env_for,
    free_port,
    publish,
    records,
    scratch_store,
    stop_and_clean,
)
from wa_trio.config.settings import Settings

RATE = 200.0  # jobs a second offered throughout


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "wa_trio", "run"], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sends(path: Path) -> list[float]:
    return sorted(r["sent_at"] for r in records(path))


def _gap_around(times: list[float], at: float) -> float:
    """The longest pause between two sends in the 5 s after ``at`` (the hand-off)."""
    around = [t for t in times if at - 0.5 <= t <= at + 5.0]
    return max((b - a for a, b in zip(around, around[1:], strict=False)), default=float("nan"))


async def _events(procs: list[subprocess.Popen[bytes]], envs: list[dict[str, str]],
                  path: Path, handoffs: int, kills: int) -> dict[str, list[float]]:
    """The rolling restarts, then the kills; ``procs[0]`` holds the lease at each event."""
    out: dict[str, list[float]] = {"handoff_gap_s": [], "takeover_s": [], "exit_s": [],
                                   "first_send_after_exit_s": []}
    for n in range(handoffs + kills):
        await trio.sleep(3.0)  # both up, the standby queued
        holder, standby = procs
        kill = n >= handoffs
        at = time.time()
        if kill:
            holder.kill()
        else:
            holder.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(holder.wait)
        exited = time.time()
        out["exit_s"].append(exited - at)  # the drain and the releases (SIGTERM)
        await trio.sleep(4.0)
        times = _sends(path)
        later = [t for t in times if t > exited]
        out["first_send_after_exit_s"].append(later[0] - exited if later else float("nan"))
        if kill:
            after = [t for t in times if t > at]
            out["takeover_s"].append(after[0] - at if after else float("nan"))
        else:
            out["handoff_gap_s"].append(_gap_around(times, at))
        envs.reverse()
        procs[:] = [standby, _spawn(envs[1])]  # the old holder comes back as the standby
    return out


def bench_replicas(tmp: Path, handoffs: int = 5, kills: int = 10, accounts: int = 1
                   ) -> dict[str, Any]:
    """``accounts`` > 1: each replica runs that many accounts (WHATSAPP_ACCOUNTS) and the jobs
    go to the pool; a rolling restart then hands every account over."""
    queue = f"bench.{uuid.uuid4().hex[:8]}.replicas"
    names = ",".join(f"a{n:02d}" for n in range(accounts)) if accounts > 1 else "default"
    seconds = (handoffs + kills) * 7.0 + 5.0
    jobs = int(RATE * seconds)
    with scratch_store() as store:
        env = env_for(queue, tmp, WHATSAPP_STORE=store, WHATSAPP_PREFETCH_COUNT="10",
                      WHATSAPP_RATE_LIMIT="400/s", WHATSAPP_RATE_BURST="1",
                      WHATSAPP_ACCOUNTS=names)
        settings = Settings.from_env(env)
        path = Path(env["WHATSAPP_DRY_RUN_FILE"])
        envs = [env, {**env, "HTTP_PORT": str(free_port()),
                      "WHATSAPP_SESSION_PATH": env["WHATSAPP_SESSION_PATH"] + "-b"}]
        procs = [_spawn(envs[0])]
        time.sleep(2.0)  # the first takes the lease
        procs.append(_spawn(envs[1]))

        async def run() -> dict[str, list[float]]:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: publish(settings, jobs, rate=RATE))
                return await _events(procs, envs, path, handoffs, kills)

        try:
            events = trio.run(run)
            deadline = time.monotonic() + 120
            while len(records(path)) < jobs and time.monotonic() < deadline:
                time.sleep(0.5)
            sent = records(path)
        finally:
            stop_and_clean(procs, settings)
    keys = [r["job_key"] for r in sent]
    gaps, takeovers = events["handoff_gap_s"], events["takeover_s"]
    return {"jobs": jobs, "accounts": accounts, "handoffs": handoffs, "kills": kills, **events,
            "handoff_gap_median_s": statistics.median(gaps) if gaps else None,
            "handoff_gap_max_s": max(gaps, default=None),
            "takeover_median_s": statistics.median(takeovers) if takeovers else None,
            "takeover_max_s": max(takeovers, default=None),
            "sent_twice": len(keys) - len(set(keys)), "lost": jobs - len(set(keys))}


def table(r: dict[str, Any]) -> list[str]:
    if not r["takeover_s"]:
        return [f"{r['accounts']} accounts, {r['jobs']:,} jobs, {r['handoffs']} rolling restarts: "
                f"hand-off gap median {r['handoff_gap_median_s']:.2f} s, max "
                f"{r['handoff_gap_max_s']:.2f} s; sent twice {r['sent_twice']}, lost {r['lost']}"]
    return [
        f"Replicas on PostgreSQL, {r['jobs']:,} jobs at {RATE:.0f}/s, {r['handoffs']} rolling "
        f"restarts then {r['kills']} kills -9", "",
        "| Measure | median | max | target |", "|---|---:|---:|---|",
        f"| hand-off (SIGTERM): last send of the old holder -> first of the new | "
        f"{r['handoff_gap_median_s']:.2f} s | {r['handoff_gap_max_s']:.2f} s | < 0.5 s |",
        f"| kill -9 -> the standby's first send | {r['takeover_median_s']:.2f} s | "
        f"{r['takeover_max_s']:.2f} s | < 2 s |",
        f"| jobs sent twice / lost over the run | {r['sent_twice']} / {r['lost']} | | "
        f"<= 1 per kill / 0 |",
    ]
