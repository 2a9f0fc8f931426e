"""SIGTERM in the middle of a stream: exit 0 within the grace period, no job lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import trio

from tests.conftest import DeleteAfter
from tests.helpers import (
    drain_queue,
    job_body,
    publish_many,
    sent_records,
    wait_for,
)
from wa_trio.config.settings import Settings


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
async def test_sigterm_mid_stream_exits_0_with_every_job_sent_or_queued(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]], signum: signal.Signals
) -> None:
    """SIGHUP is a graceful stop too (it used to kill the worker with no drain)."""
    env = make_env(WHATSAPP_SHUTDOWN_GRACE="5s", ENV="production")
    settings = Settings.from_env(env)
    total = 2000
    ids = [f"job-{i}" for i in range(total)]
    delete_after(settings)
    await publish_many(settings, (job_body(i) for i in range(total)), message_ids=ids)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wa_trio", "run"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) >= 200, what="200 sent")
        proc.send_signal(signum)
        stopped_at = time.monotonic()
        returncode = await trio.to_thread.run_sync(proc.wait, 30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert returncode == 0, stderr
    assert took < settings.shutdown_grace + 1, took
    sent = [r["job_key"] for r in sent_records(settings.dry_run_file)]
    assert len(sent) == len(set(sent)), "a job was sent twice"
    assert len(sent) < total, "the stream ended before SIGTERM; the test proved nothing"
    queued = [m.header.message_id for m in await drain_queue(settings, settings.queue_name)]
    assert not set(sent) & set(queued), "a sent job was left in the queue"
    assert sorted(set(sent) | set(queued)) == sorted(ids)
