"""One job, one eliot tree, found by its key with eliot-tree; no text, masked numbers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import StartWorker
from tests.helpers import (
    delete_topology,
    job_body,
    job_metric,
    publish_many,
    sent_records,
    wait_for,
)
from wa_trio.config.settings import Settings
from wa_trio.log import configure_logging, log_file_path


def eliot_tree(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", "from eliottree._cli import main; main()", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


async def test_each_job_is_one_tree_found_by_key_without_text_or_full_number(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, tmp_path: Path
) -> None:
    settings = Settings.from_env(make_env(LOG_TO_FILE="true", LOG_DIR=str(tmp_path / "logs")))
    handle = configure_logging(settings, io.StringIO())
    try:
        worker = await start_worker(settings)
        await publish_many(
            settings,
            [job_body(1, text_message="very secret text"), b"{oops"],
            message_ids=["job-a", "job-b"],
            headers={"trace_id": "trace-77"},
        )
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="sent")
        await wait_for(
            lambda: job_metric(worker, "worker_jobs_processed_total", status="invalid") == 1,
            what="rejected",
        )
        worker.stop()
        await wait_for(lambda: not worker.pipeline.connected, what="stopped")
    finally:
        handle.close()
        await delete_topology(settings)
    log = log_file_path(settings)
    text = log.read_text()
    assert "very secret text" not in text
    leaks = [line for line in text.splitlines() if "5511999999999" in line]
    assert not leaks, leaks[:3]
    assert "+55*******9999" in text

    # the runbook's two steps: the task of a job key, then that task's whole tree
    def task_of(key: str) -> str:
        tasks = {
            json.loads(line)["task_uuid"]
            for line in text.splitlines()
            if json.loads(line).get("job_key") == key
        }
        assert len(tasks) == 1, tasks
        task: str = tasks.pop()
        return task

    tree = eliot_tree("-u", task_of("job-a"), str(log))
    assert tree.count("wa_trio:job/1") == 1  # exactly one tree
    for part in (
        "wa_trio:job:send",
        "acked: True",
        "outcome: success",
        "trace-77",
    ):
        assert part in tree, part
    # four messages for a sent job (issue 20): start, send start, send end, end (plus the
    # dry-run transport's own record of the would-be send)
    lines = [json.loads(line) for line in text.splitlines()]
    ours = [
        m
        for m in lines
        if m["task_uuid"] == task_of("job-a") and m.get("message_type") != "wa_trio:dry_run:send"
    ]
    assert len(ours) == 4, [m.get("action_type") or m.get("message_type") for m in ours]
    assert "job-b" not in tree
    rejected = eliot_tree("-u", task_of("job-b"), str(log))
    assert "wa_trio:job:dead_letter" in rejected and "invalid_json" in rejected
