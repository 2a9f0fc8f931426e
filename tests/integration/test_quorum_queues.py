"""WHATSAPP_QUEUE_TYPE=quorum (issue 34, first part) on the machine's node (quorum queues work
on one node): every queue wa-trio declares is a quorum queue, jobs are sent, a failing job
goes through the quorum retry queues (TTL, at-least-once dead-lettering back) to the quorum
DLQ; a queue of the other type is one line that says how to move."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import drain_queue as _drain
from tests.helpers import (
    error_code,
    job_body,
    publish_many,
    queue_count,
    rabbitmqctl,
    require_tool,
    sent_records,
    wait_for,
)
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress
from wa_trio.config.settings import Settings
from wa_trio.core.errors import TopologyError


def _types(settings: Settings) -> dict[str, str]:
    out = rabbitmqctl("list_queues", "-p", settings.rabbitmq_vhost, "name", "type", "--quiet")
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {
        row[0]: row[1] for row in rows if len(row) == 2 and row[0].startswith(settings.queue_name)
    }


async def test_every_queue_is_a_quorum_queue_and_jobs_flow_through_them(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
) -> None:
    require_tool("rabbitmqctl", how="apt install rabbitmq-server")
    settings = delete_after(
        Settings.from_env(
            make_env(
                WHATSAPP_QUEUE_TYPE="quorum",
                WHATSAPP_RETRY_DELAYS="1s,1s",
                WHATSAPP_DRY_RUN_FAIL_RATE="0",
            )
        )
    )
    worker = await start_worker(settings)
    types = await trio.to_thread.run_sync(_types, settings)
    assert types[settings.queue_name] == "quorum" and types[settings.dlq_name] == "quorum"
    delays = [name for name in types if ".retry." in name or ".wait." in name]
    assert delays and all(types[name] == "quorum" for name in delays)
    await publish_many(settings, [job_body(n) for n in range(20)])
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 20, what="20 sent")
    worker.stop()


async def test_a_failing_job_goes_through_quorum_retry_queues_to_the_dlq(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
) -> None:
    settings = delete_after(
        Settings.from_env(
            make_env(
                WHATSAPP_QUEUE_TYPE="quorum",
                WHATSAPP_RETRY_DELAYS="1s,1s",
                WHATSAPP_DRY_RUN_FAIL_RATE="1",
            )
        )
    )
    await start_worker(settings)
    await publish_many(settings, [job_body(1)], ["q-1"])

    async def dead() -> bool:
        return await queue_count(settings, settings.dlq_name) == 1

    await wait_for(dead, timeout=30, what="two retries through quorum TTL queues, then the DLQ")
    [letter] = await _drain(settings, settings.dlq_name)
    assert error_code(letter) == "retries_exhausted"


async def test_a_classic_queue_asked_to_be_quorum_is_one_line(
    delete_after: DeleteAfter, make_env: Callable[..., dict[str, str]]
) -> None:
    classic = delete_after(Settings.from_env(make_env()))
    async with amqp.connect(BrokerAddress.from_settings(classic)) as connection:
        await amqp.declare_topology(connection, classic)
    import attrs

    quorum = attrs.evolve(classic, queue_type="quorum")
    with pytest.raises(TopologyError) as refused:
        async with amqp.connect(BrokerAddress.from_settings(quorum)) as connection:
            await amqp.declare_topology(connection, quorum)
    line = refused.value.message
    assert "\n" not in line and "differs" in line
    assert "a queue cannot change type" in line and "WHATSAPP_QUEUE_TYPE" in line


async def test_a_worker_whose_first_listed_node_is_down_uses_the_next(
    delete_after: DeleteAfter,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
) -> None:
    """RABBITMQ_URL lists a cluster's nodes: the first (a closed port here, as a node that is
    down) is skipped and the worker connects, consumes and publishes through the next; its
    status events and broker monitor (connections of their own) find it too."""
    from tests.conftest import closed_port
    from wa_trio.bus.address import NODES

    down = closed_port()
    url = f"amqp://guest:guest@127.0.0.1:{down},127.0.0.1:5672/"
    settings = delete_after(Settings.from_env(make_env(RABBITMQ_URL=url)))
    address = BrokerAddress.from_settings(settings)
    assert address.all_nodes == (("127.0.0.1", down), ("127.0.0.1", 5672))
    worker = await start_worker(settings)
    await publish_many(settings, [job_body(n) for n in range(5)])
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 5, what="5 sent")
    assert NODES.order(address)[0] == ("127.0.0.1", 5672)  # the node that answered: first now
    assert (await worker.monitor.check()).ok  # the monitor's own connection too
