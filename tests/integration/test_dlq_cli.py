from __future__ import annotations

import json

import attrs
import pytest
import trio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import (
    job_body,
    publish_many,
    queue_count,
    sent_records,
    wait_for,
)
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings


async def test_dlq_list_then_replay_by_code_after_fixing_the_cause(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = cli_settings
    delete_after(settings)
    worker = await start_worker(settings)
    bad_text = job_body(1, text_message="1 UNION SELECT secret")
    await publish_many(settings, [bad_text, b"{broken"], message_ids=["m-1", "m-2"])
    await wait_for(lambda: _count(settings, 2), what="2 dead-lettered")
    worker.stop()

    assert await trio.to_thread.run_sync(main, ["dlq", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(d["message_id"], d["code"]) for d in listed} == {
        ("m-1", "content_rejected"),
        ("m-2", "invalid_json"),
    }
    assert await queue_count(settings, settings.dlq_name) == 2  # listing removed nothing

    # the cause is fixed (the filter turned off); replay only content_rejected
    monkeypatch.setenv("WHATSAPP_CONTENT_FILTER", "off")
    assert await trio.to_thread.run_sync(main, ["dlq", "replay", "--code", "content_rejected"]) == 0
    assert json.loads(capsys.readouterr().out) == {"replayed": 1, "left": 1}
    assert await queue_count(settings, settings.dlq_name) == 1
    fixed = attrs.evolve(settings, content_filter=False)
    await start_worker(fixed)
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="replayed sent")
    assert sent_records(settings.dry_run_file)[0]["job_key"] == "m-1"


async def _count(settings: Settings, n: int) -> bool:
    return await queue_count(settings, settings.dlq_name) == n
