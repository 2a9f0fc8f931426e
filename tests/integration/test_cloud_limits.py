"""Meta's limits on the Cloud API route (issue 33), against the fake Graph on loopback, which
enforces a number's throughput the way Meta does (more sends than the level in any second:
130429): the tier read from the number is held, a 130429 backs the number off without
spending the job's retries, and 131050 opts the person out."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.conftest import StartWorker
from tests.fake_graph import VERSION, Answer, FakeGraph, dump
from tests.helpers import (
    delete_topology,
    error_code,
    job_body,
    max_in_window,
    publish_many,
    stop_worker,
    wait_for,
)
from tests.helpers import drain_queue as _drain
from tests.integration.test_cloud_api import _settings, meta_body, post_signed
from wa_trio.core.errors import SendError
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState, OutgoingMessage
from wa_trio.transport.cloud_api import CloudApiTransport

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"
ROOT = Path(__file__).resolve().parents[2]


@attrs.frozen
class _Alone:
    """The fake Graph API in a process of its own (``python -m tests.fake_graph``)."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{VERSION}"


async def _graph_alone(
    nursery: trio.Nursery, tmp_path: Path, *, throughput: int, level: str
) -> _Alone:
    """Where Meta counts a number's sends matters: in the test's own process, a trio loop
    stalled (a loaded CI machine, coverage) served a bunch at once that the client had spread
    out, and the fake counted them in one second."""
    port_file = tmp_path / "graph.port"
    command = [sys.executable, "-m", "tests.fake_graph", str(throughput), level, str(port_file)]
    nursery.start_soon(partial(trio.run_process, command, cwd=ROOT))
    await wait_for(lambda: port_file.exists() and port_file.read_text() != "", what="the fake")
    return _Alone(int(port_file.read_text()))


async def test_the_numbers_tier_is_held_for_ten_seconds(
    make_env: Callable[..., dict[str, str]],
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = await _graph_alone(nursery, tmp_path, throughput=80, level="STANDARD")
    transport = CloudApiTransport(_settings(make_env, graph), Redactor(True))
    await nursery.start(transport.run)
    await wait_for(lambda: transport.state is ConnectionState.CONNECTED, what="connected")
    assert transport.mps == 80
    timing = _Timing.around(transport, monkeypatch)
    total, senders = 800, 40  # about 10 s at the tier
    started = trio.current_time()

    async def sender(first: int) -> None:
        for n in range(first, total, senders):
            await transport.send(OutgoingMessage(f"+55119{n:08d}", f"m{n}", UID, f"k{n}"))

    async with trio.open_nursery() as many:
        many.start_soon(timing.watch_the_loop)
        async with trio.open_nursery() as sending:
            for first in range(senders):
                sending.start_soon(sender, first)
        many.cancel_scope.cancel()
    took = trio.current_time() - started
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"http://127.0.0.1:{graph.port}/_stats")).json()
    # The client starts at most 77 sends in any second (3 % under the tier), on its clock.
    most = max_in_window(timing.starts, 1.0)
    assert most <= 77, most
    # The fake counts arrivals, which trail the starts by up to the longest request: a loaded
    # machine that holds a request back for 0.1 s can land sends started in 1.1 s in one
    # second there (a CI run once saw 37 over after a stall). Meta answers those 130429 and
    # the transport backs off and sends them again in place. A pacing fault (no bucket, a
    # burst of 10) is hundreds over and fails here either way.
    bunched = 3 + math.ceil(77 * timing.longest_request)
    assert stats["over_throughput"] <= bunched, (stats, timing.longest_request)
    assert transport.throttled == stats["over_throughput"]
    assert stats["accepted"] == total
    # Not over the tier in the whole run, and using it: at the tier's pace in the time the
    # process could send. The bucket holds no burst, so the seconds a loaded machine kept the
    # process from running (11.1 s instead of 10.4 s in a CI run) and the number's back-offs
    # after a 130429 are not made up; a pacer at a lower level (the shared number's 20, or a
    # margin of a tenth and more) is under 72 either way.
    rate = (total - 1) / took
    assert rate <= 84.0, rate
    could_send = took - timing.late - 0.25 * stats["over_throughput"]
    assert (total - 1) / max(could_send, 0.001) >= 72.0, (rate, timing.late, stats)


@attrs.define
class _Timing:
    """When the transport starts each request and how long each takes (wrapped around its
    pacer and its HTTP call), and how late the test's own event loop ran."""

    starts: list[float] = attrs.field(factory=list)
    longest_request: float = 0.0
    late: float = 0.0  # the time the loop was late: seconds in which the process could not send
    _started: dict[trio.lowlevel.Task, float] = attrs.field(factory=dict)

    @classmethod
    def around(cls, transport: CloudApiTransport, monkeypatch: pytest.MonkeyPatch) -> _Timing:
        timing = cls()
        paced, call = transport._paced, transport._call

        async def started() -> None:
            await paced()
            now = transport._window[-1]  # the time the pacer counted this start at
            timing.starts.append(now)
            timing._started[trio.lowlevel.current_task()] = now

        async def answered(*args: Any, **kwargs: Any) -> Any:
            try:
                return await call(*args, **kwargs)
            finally:
                began = timing._started.get(trio.lowlevel.current_task())
                if began is not None:
                    took = trio.current_time() - began
                    timing.longest_request = max(timing.longest_request, took)

        monkeypatch.setattr(transport, "_paced", started)
        monkeypatch.setattr(transport, "_call", answered)
        return timing

    async def watch_the_loop(self) -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            behind = trio.current_time() - before - 0.01
            self.late += behind if behind >= 0.005 else 0.0


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


def _received(messages: list[dict[str, Any]]) -> bytes:
    """Meta's webhook (BSUIDs since 2026: ``from_user_id`` beside, or instead of,
    ``from``; docs/cloud-api.md)."""
    return dump(meta_body({"messaging_product": "whatsapp", "messages": messages}))


async def test_a_stop_from_a_username_user_stops_jobs_to_their_number(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    """Issue 27, one identity per person, from outside: a signed webhook brings STOP from a
    user known only by their BSUID (no phone number), another message links that BSUID to
    their number (Brazil's old form); a job to the number in its other form is dead-lettered
    ``opted_out`` without a request to Meta. The published inbound event names the BSUID."""

    from tests.helpers import EventTap

    graph = FakeGraph()
    await nursery.start(graph.serve)
    settings = _settings(make_env, graph, WHATSAPP_RATE_LIMIT="off")
    worker = await start_worker(settings)
    tap = EventTap(settings, routing_key=settings.inbound_routing_key)
    await tap.bind()
    user = "BR.13491208655302741918"
    try:
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        stop = {"from_user_id": user, "id": "wamid.in1", "timestamp": "1764111111",
                "type": "text", "text": {"body": "STOP"}}  # fmt: skip
        linked = {"from": "551187654321", "from_user_id": user, "id": "wamid.in2",
                  "timestamp": "1764111112", "type": "text", "text": {"body": "ok"}}  # fmt: skip
        for body in (_received([stop]), _received([linked])):
            assert await post_signed(worker.http_url, body) == 200
        await wait_for(lambda: tap.at_least(2), what="both published")
        assert [(e["sender"], e.get("sender_user_id")) for e in tap.events] == [
            (None, user),
            ("+551187654321", user),
        ]
        await publish_many(settings, [job_body(1, destination="+55 11 98765-4321")], ["j-1"])

        async def dead() -> bool:
            from tests.helpers import queue_count

            return await queue_count(settings, settings.dlq_name) == 1

        await wait_for(dead, what="dead-lettered")
        assert [error_code(m) for m in await _drain(settings, settings.dlq_name)] == ["opted_out"]
        assert graph.sends == []
    finally:
        with trio.move_on_after(15):
            await stop_worker(worker)
        await delete_topology(settings, extra_queues=[tap.queue])


async def test_131049_is_tried_again_a_day_later_within_the_deadline(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    """Meta's per-user marketing limit is not permanent: the job waits a day in the wait
    queues (``x-not-before``, one retry, a ``retrying`` event) and is sent when it comes back
    after that; a job whose deadline comes first is dead-lettered ``expired`` at once."""
    import time
    from datetime import UTC, datetime

    from wa_trio.bus.topology import wait_queue_name
    from wa_trio.core.job import not_before
    from wa_trio.core.schedule import LADDER

    limited = Answer(status=400, meta_code=131049)
    graph = FakeGraph([limited, limited])
    await nursery.start(graph.serve)
    settings = _settings(make_env, graph, WHATSAPP_RATE_LIMIT="off")
    worker = await start_worker(settings)
    day = wait_queue_name(settings, LADDER[0])
    try:
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        soon = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        await publish_many(settings, [job_body(1), job_body(2, expires_at=soon)], ["m-1", "m-2"])

        async def settled() -> bool:
            from tests.helpers import queue_count

            return (
                await queue_count(settings, day) == 1
                and await queue_count(settings, settings.dlq_name) == 1
            )

        await wait_for(settled, what="one resting, one expired")
        assert [error_code(m) for m in await _drain(settings, settings.dlq_name)] == ["expired"]
        [resting] = await _drain(settings, day)
        headers = resting.header.headers
        rest = not_before(headers)
        assert rest is not None and 86000 < rest - time.time() <= 86400
        assert headers["x-retry-count"] == 1
        # a day later: the copy comes back from the wait queue with its rest over
        back = {**headers, "x-not-before": time.time() - 1}
        await publish_many(settings, [resting.body], ["m-1"], headers=back)
        await wait_for(lambda: len(graph.accepted) == 1, what="sent the second time")
        assert len(graph.sends) == 3  # two refused (one per job), one accepted
    finally:
        with trio.move_on_after(15):
            await stop_worker(worker)
        await delete_topology(settings)


async def test_redelivered_webhooks_publish_once_even_after_a_restart(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker, nursery: trio.Nursery
) -> None:
    """Meta sends a notification again when it did not see our 200: the same inbound message
    and the same status, posted three times (the third after a restart of the worker), give
    one inbound event and one status event."""

    from tests.helpers import EventTap

    graph = FakeGraph()
    await nursery.start(graph.serve)
    settings = _settings(make_env, graph, WHATSAPP_RATE_LIMIT="off")
    inbound = EventTap(settings, routing_key=settings.inbound_routing_key)
    status = EventTap(settings)
    await inbound.bind()
    await status.bind()
    message = {"from": "5511988887777", "id": "wamid.in9", "timestamp": "1764111111",
               "type": "text", "text": {"body": "oi"}}  # fmt: skip
    try:
        worker = await start_worker(settings)
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        await publish_many(settings, [job_body(1)], ["d-1"])
        await wait_for(lambda: len(graph.accepted) == 1, what="sent")
        delivered = {"id": "wamid.1", "status": "delivered", "timestamp": "1764111112"}
        value = {"messaging_product": "whatsapp", "messages": [message], "statuses": [delivered]}
        body = dump(meta_body(value))
        assert await post_signed(worker.http_url, body) == 200
        assert await post_signed(worker.http_url, body) == 200

        async def published() -> bool:
            return await inbound.at_least(1) and await status.at_least(2)

        await wait_for(published, what="published")
        with trio.move_on_after(15):
            await stop_worker(worker)
        worker = await start_worker(settings)
        await wait_for(lambda: worker.transport.state is ConnectionState.CONNECTED, what="up")
        assert await post_signed(worker.http_url, body) == 200
        await trio.sleep(1.5)  # what a third copy would take to be published
        await inbound.at_least(0)
        await status.at_least(0)
        assert [e["whatsapp_message_id"] for e in inbound.events] == ["wamid.in9"]
        assert [e["status"] for e in status.events] == ["sent", "delivered"]
        with trio.move_on_after(15):
            await stop_worker(worker)
    finally:
        await delete_topology(settings, extra_queues=[inbound.queue, status.queue])
