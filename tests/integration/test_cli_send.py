from __future__ import annotations

import json

import pytest

from tests.helpers import delete_topology, drain_queue
from wa_trio.cli import main
from wa_trio.config import Settings


async def test_send_publishes_one_confirmed_job(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli_settings
    try:
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
    finally:
        await delete_topology(settings)
