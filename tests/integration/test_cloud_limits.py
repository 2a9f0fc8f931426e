"""Meta's limits on the Cloud API route (issue 33), against the fake Graph on loopback, which
enforces a number's throughput the way Meta does (more sends than the level in any second:
130429): the tier read from the number is held, a 130429 backs the number off without
spending the job's retries, and 131050 opts the person out."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.conftest import StartWorker
from tests.fake_graph import Answer, FakeGraph
from tests.helpers import delete_topology, error_code, job_body, publish_many, stop_worker, wait_for
from tests.helpers import drain_queue as _drain
from tests.integration.test_cloud_api import _settings
from wa_trio.core.errors import SendError
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState, OutgoingMessage
from wa_trio.transport.cloud_api import CloudApiTransport

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


async def test_the_numbers_tier_is_held_for_ten_seconds(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    graph = FakeGraph()
    graph.throughput, graph.level = 80, "STANDARD"
    await nursery.start(graph.serve)
    transport = CloudApiTransport(_settings(make_env, graph), Redactor(True))
    await nursery.start(transport.run)
    await wait_for(lambda: transport.state is ConnectionState.CONNECTED, what="connected")
    assert transport.mps == 80
    total, senders = 800, 40  # about 10 s at the tier
    started = trio.current_time()

    async def sender(first: int) -> None:
        for n in range(first, total, senders):
            await transport.send(OutgoingMessage(f"+55119{n:08d}", f"m{n}", UID, f"k{n}"))

    async with trio.open_nursery() as many:
        for first in range(senders):
            many.start_soon(sender, first)
    took = trio.current_time() - started
    assert graph.over_throughput == 0 and transport.throttled == 0
    assert len(graph.accepted) == total
    rate = (total - 1) / took
    assert 76.0 <= rate <= 84.0, rate  # within 5 % of the tier


async def test_a_130429_backs_the_number_off_and_the_send_goes_through_in_place(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    throttled = Answer(status=400, meta_code=130429)
    graph = FakeGraph([throttled, throttled])
    await nursery.start(graph.serve)
    transport = CloudApiTransport(_settings(make_env, graph), Redactor(True))
    await nursery.start(transport.run)
    await wait_for(lambda: transport.state is ConnectionState.CONNECTED, what="connected")
    started = trio.current_time()
    result = await transport.send(OutgoingMessage("+5511999990001", "hi", UID, "k1"))
    assert result.message_id == "wamid.3" and transport.throttled == 2
    assert trio.current_time() - started >= 0.25 + 0.5  # backed off twice, doubling


async def test_131050_opts_the_person_out_and_the_next_job_makes_no_request(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    graph = FakeGraph([Answer(status=400, meta_code=131050)])
    await nursery.start(graph.serve)
    settings = _settings(make_env, graph, WHATSAPP_RATE_LIMIT="off")
    worker = await start_worker(settings)
    try:
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        await publish_many(settings, [job_body(1, destination="+5511999990001")], ["j-1"])
        await wait_for(lambda: len(graph.sends) == 1, what="the refused send")
        await publish_many(settings, [job_body(2, destination="+55 11 99999-0001")], ["j-2"])

        async def two_dead() -> bool:
            from tests.helpers import queue_count

            return await queue_count(settings, settings.dlq_name) == 2

        await wait_for(two_dead, what="both dead-lettered")
        assert len(graph.sends) == 1  # the second never reached Meta
        codes = [error_code(m) for m in await _drain(settings, settings.dlq_name)]
        assert codes == ["opted_out", "opted_out"]
        await wait_for(lambda: not worker.safety._new_optouts, what="flushed")
        listed = worker.safety.optout_store.optouts()
        assert [(o.number, o.source) for o in listed] == [
            ("+5511999990001", "cloud:131050:default")
        ]
    finally:
        with trio.move_on_after(15):
            await stop_worker(worker)
        await delete_topology(settings)


async def test_131056_rests_that_recipient_only(
    make_env: Callable[..., dict[str, str]], nursery: trio.Nursery
) -> None:
    graph = FakeGraph([Answer(status=400, meta_code=131056)])
    await nursery.start(graph.serve)
    transport = CloudApiTransport(_settings(make_env, graph), Redactor(True))
    await nursery.start(transport.run)
    await wait_for(lambda: transport.state is ConnectionState.CONNECTED, what="connected")
    busy = OutgoingMessage("+5511999990001", "hi", UID, "k1")
    with pytest.raises(SendError) as first:
        await transport.send(busy)
    assert first.value.transient and (first.value.retry_after or 0) >= 6.0
    with pytest.raises(SendError) as again:  # within the rest: back to its ladder, no request
        await transport.send(OutgoingMessage("+5511999990001", "hi", UID, "k2"))
    assert again.value.code == "cloud_rate_limited" and len(graph.sends) == 1
    other = await transport.send(OutgoingMessage("+5511999990002", "hi", UID, "k3"))
    assert other.message_id == "wamid.2"  # another recipient is not held up
