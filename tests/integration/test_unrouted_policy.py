"""docs/scaling.md's recipe (issue 30): a job pinned to an account nobody runs is dropped by
the broker, unless the exchange has an alternate exchange; a policy gives it the DLX, and the
job reaches the DLQ. The policy is the test's own (on its own exchange), removed after."""

from __future__ import annotations

import json
import re

import pytest
import trio

from tests.conftest import DeleteAfter
from tests.helpers import job_body, queue_count, rabbitmqctl, require_tool, wait_for
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, BrokerError, Properties
from wa_trio.config.settings import Settings


async def _pin(settings: Settings, account: str) -> None:
    async with (
        amqp.connect(BrokerAddress.from_settings(settings)) as connection,
        connection.open_channel() as channel,
    ):
        await amqp.publish(
            channel,
            settings.exchange,
            f"{settings.routing_key}.{account}",
            job_body(1),
            Properties(message_id=f"pinned-{account}"),
        )


async def test_a_policy_sends_jobs_for_unknown_accounts_to_the_dlq(
    delete_after: DeleteAfter, settings: Settings
) -> None:
    require_tool("rabbitmqctl", how="apt install rabbitmq-server")
    delete_after(settings)
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
    with pytest.raises(BrokerError, match="unroutable"):  # ours publish with mandatory
        await _pin(settings, "nobody")
    assert await queue_count(settings, settings.dlq_name) == 0
    name = f"wa-trio-test-{settings.exchange}"
    pattern = "^" + re.escape(settings.exchange) + "$"
    definition = json.dumps({"alternate-exchange": settings.dlx})
    await trio.to_thread.run_sync(
        lambda: rabbitmqctl("set_policy", name, pattern, definition, "--apply-to", "exchanges")
    )
    try:

        async def arrived() -> bool:
            await _pin(settings, "nobody-either")
            return await queue_count(settings, settings.dlq_name) >= 1

        await wait_for(arrived, timeout=30, interval=0.5, what="the unrouted job in the DLQ")
    finally:
        await trio.to_thread.run_sync(lambda: rabbitmqctl("clear_policy", name))
