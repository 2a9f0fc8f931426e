"""A templated job through the real broker: rendered, sent; an unknown one dead-lettered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import drain_queue, publish_many, sent_records, wait_for
from wa_trio.config.settings import Settings

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


async def test_a_templated_job_is_rendered_and_sent(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "otp.txt").write_text("Your code is {{ code }}")
    (folder / "otp.pt_BR.txt").write_text("Seu código é {{ code }}")
    settings = Settings.from_env(make_env(WHATSAPP_TEMPLATES_DIR=str(folder)))
    delete_after(settings)
    await start_worker(settings)
    jobs = [
        {"template": "otp", "params": {"code": "123456"}, "language": "pt_BR"},
        {"template": "missing", "params": {}},
    ]
    bodies = [
        json.dumps({"user_id": UID, "destination": "+5511999999999", **job}).encode()
        for job in jobs
    ]
    await publish_many(settings, bodies, message_ids=["t-1", "t-2"])
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 1, what="sent")
    assert sent_records(settings.dry_run_file)[0]["text_message"] == "Seu código é 123456"

    async def dead_lettered() -> bool:
        letters = await drain_queue(settings, settings.dlq_name)
        codes = [letter.header.headers["x-error-code"] for letter in letters]
        return codes in (["template_not_found"], [b"template_not_found"])

    await wait_for(dead_lettered, what="template_not_found dead-lettered")
