"""``wa-trio trace`` (issue 31): one job's story from the CLI, text and --json, with the worker
stopped: its ledger row, what the log says happened, its dead letter in the DLQ; exit 1 and one
line for a job nobody knows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs
import pytest
import trio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import job_body, publish_many, queue_count, sent_records, wait_for
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.log import configure_logging


async def test_trace_tells_a_sent_job_and_a_dead_letter(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    monkeypatch.setenv("LOG_TO_FILE", "true")
    monkeypatch.setenv("LOG_DIR", str(logs))
    settings = delete_after(attrs.evolve(cli_settings, log_to_file=True, log_dir=logs))
    handle = configure_logging(settings, io.StringIO())
    try:
        worker = await start_worker(settings)
        await publish_many(settings, [job_body(1), b"{broken"], message_ids=["t-sent", "t-bad"])
        await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="sent")

        async def dead() -> bool:
            return await queue_count(settings, settings.dlq_name) == 1

        await wait_for(dead, what="dead-lettered")
        worker.stop()
        await wait_for(lambda: not worker.pipeline.connected, what="stopped")
    finally:
        handle.close()

    assert await trio.to_thread.run_sync(main, ["trace", "t-sent"]) == 0
    text = capsys.readouterr().out
    assert "default: sent at" in text and "whatsapp_accepted" in text and "success" in text
    assert "wa_trio:job/1" in text  # the eliot tree

    assert await trio.to_thread.run_sync(main, ["trace", "t-bad", "--json"]) == 0
    story = json.loads(capsys.readouterr().out)
    assert story["found"] is True and story["ledger"] == []
    assert [letter["code"] for letter in story["letters"]] == ["invalid_json"]
    assert "dead_lettered" in [event["what"] for event in story["events"]]

    assert await trio.to_thread.run_sync(main, ["trace", "nobody-knows"]) == 1
    captured = capsys.readouterr()
    assert "nothing known of 'nobody-knows'" in captured.err
