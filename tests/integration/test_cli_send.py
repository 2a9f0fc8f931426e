from __future__ import annotations

import json

import pytest

from tests.conftest import DeleteAfter
from tests.helpers import drain_queue
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings


async def test_send_publishes_one_confirmed_job(
    delete_after: DeleteAfter, cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli_settings
    delete_after(settings)
    import trio

    code = await trio.to_thread.run_sync(
        main,
        [
            "send",
            "--destination",
            "+55 11 99999-9999",
            "--text",
            "hi there",
            "--message-id",
            "cli-1",
        ],
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["message_id"] == "cli-1"
    [message] = await drain_queue(settings, settings.queue_name)
    assert message.header.message_id == "cli-1"
    body = json.loads(message.body)
    assert body["destination"] == "+55 11 99999-9999"  # cleaned by the worker, not here
    assert body["text_message"] == "hi there"


async def test_send_publishes_a_media_job_from_a_file(
    delete_after: DeleteAfter,
    cli_settings: Settings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
) -> None:
    import base64
    from pathlib import Path

    import trio

    from tests.media_samples import PDF

    settings = cli_settings
    receipt = Path(str(tmp_path)) / "receipt.pdf"
    receipt.write_bytes(PDF)
    delete_after(settings)
    args = ["send", "--destination", "+5511999999999", "--media", str(receipt)]
    assert await trio.to_thread.run_sync(main, [*args, "--text", "x"]) == 1  # no --kind
    assert "--media and --kind go together" in capsys.readouterr().err
    code = await trio.to_thread.run_sync(
        main, [*args, "--kind", "document", "--text", "Your receipt"]
    )
    assert code == 0
    [message] = await drain_queue(settings, settings.queue_name)
    body = json.loads(message.body)
    assert body["media"]["kind"] == "document"
    assert body["media"]["filename"] == "receipt.pdf"
    assert base64.b64decode(body["media"]["data"]) == PDF
    assert body["text_message"] == "Your receipt"
    group = ["send", "--destination", "120363025246125486@g.us", "--text", "hello group"]
    assert await trio.to_thread.run_sync(main, group) == 0
    assert (
        await trio.to_thread.run_sync(main, ["send", "--destination", "1@g.us", "--text", "x"]) == 1
    )
