"""Issue 30: a dry-run worker can "receive" a message (``wa-trio inbound``, POST
/dry-run/inbound), so the opt-out flow is tried without a phone: STOP from a number, then a
job to it is dead-lettered ``opted_out``."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import job_body, publish_many, queue_count, sent_records, wait_for
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.core.identity import person_key

TOKEN = "inbound-token-0123456789"


async def test_a_simulated_stop_opts_the_sender_out(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WHATSAPP_ADMIN_TOKEN", TOKEN)
    settings = delete_after(attrs.evolve(cli_settings, admin_token=TOKEN))
    worker = await start_worker(settings)
    monkeypatch.setenv("HTTP_PORT", str(urlsplit(worker.http_url).port))
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        anonymous = await http.post(
            "/dry-run/inbound", json={"from": "+5511999990001", "text": "x"}
        )
        assert anonymous.status_code == 401
        bad = await http.post(
            "/dry-run/inbound", json={"from": "not a number", "text": "STOP"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        assert bad.status_code == 422
    code = await trio.to_thread.run_sync(
        main, ["inbound", "--from", "+55 (11) 99999-0001", "--text", "STOP"]
    )
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["accepted"] is True and answer["whatsapp_message_id"].startswith("DRYIN")
    key = person_key("+5511999990001")
    await wait_for(lambda: key in worker.safety._optouts, what="opted out")
    await publish_many(settings, [job_body(1, destination="+5511999990001"), job_body(2)])
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="the other sent")

    async def dead() -> bool:
        return await queue_count(settings, settings.dlq_name) == 1

    await wait_for(dead, what="the opted-out job dead-lettered")
    assert worker.metrics.registry.get_sample_value("whatsapp_optouts_total") == 1
