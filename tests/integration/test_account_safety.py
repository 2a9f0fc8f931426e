"""Listening to keep the account safe (issue 19), end to end: real neonize event objects fired
from foreign threads through the client double, the real broker, the worker's HTTP server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import httpx
import jsonschema
import trio
from neonize.events import ConnectedEv, MessageEv, StreamReplacedEv, TemporaryBanEv
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from tests.conftest import DeleteAfter, StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    EventTap,
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    queue_count,
    wait_for,
)
from tests.helpers import (
    error_code as _code,
)
from wa_trio.bus import amqp
from wa_trio.config.settings import Settings
from wa_trio.core.schedule import LADDER
from wa_trio.transport import ConnectionState as S
from wa_trio.worker.app import Worker

TOKEN = "operator-token-0123456789"
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "inbound-message.schema.json").read_text()
)


def incoming(
    text: str | None,
    number: str = "5511988887777",
    *,
    message_id: str = "3EB0IN01",
    body: e2e.Message | None = None,
    group: str | None = None,
) -> MessageEv:
    person = JID(User=number, Server="s.whatsapp.net")
    chat = JID(User=group, Server="g.us") if group else person
    return MessageEv(
        Info=MessageInfo(
            MessageSource=MessageSource(Chat=chat, Sender=person, IsGroup=group is not None),
            ID=message_id,
            Timestamp=1764111111000,  # ms, as goneonize EncodeMessageInfo encodes it
        ),
        Message=body if body is not None else e2e.Message(conversation=text or ""),
    )


async def _connected(
    settings: Settings, start_worker: StartWorker, **client: Any
) -> tuple[Worker, FakeClient]:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, **client)
    worker = await start_worker(settings, transport=transport)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
    return worker, clients[0]


async def test_received_messages_are_published_with_their_schema(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, transport="neonize")
    tap = EventTap(settings, settings.inbound_routing_key)
    await tap.bind()
    worker, client = await _connected(settings, start_worker)
    delete_after(settings, extra_queues=[tap.queue])
    reply = e2e.Message(
        extendedTextMessage=e2e.ExtendedTextMessage(
            text="Pode ser amanhã?", contextInfo=e2e.ContextInfo(stanzaID="3EB0SENT01")
        )
    )
    image = e2e.Message(
        imageMessage=e2e.ImageMessage(caption="nota", mimetype="image/jpeg", fileLength=4096)
    )
    for event in (
        incoming(None, body=reply, message_id="in-1"),
        incoming(None, body=image, message_id="in-2"),
        incoming("bom dia, grupo", message_id="in-3", group="120363025246125486"),
    ):
        await trio.to_thread.run_sync(client.fire, event)  # a foreign thread, like Go's
    await wait_for(lambda: tap.at_least(3), what="three inbound events")
    for event in tap.events:
        jsonschema.validate(event, SCHEMA)
    by_id = {event["whatsapp_message_id"]: event for event in tap.events}
    assert by_id["in-1"]["text"] == "Pode ser amanhã?"
    assert by_id["in-1"]["reply_to"] == "3EB0SENT01"
    assert by_id["in-1"]["sender"] == "+5511988887777"
    assert by_id["in-2"]["kind"] == "image" and by_id["in-2"]["media"]["size"] == 4096
    assert by_id["in-3"]["group"] == "120363025246125486@g.us"
    sample = worker.metrics.registry.get_sample_value
    assert sample("whatsapp_inbound_messages_total", {"kind": "text"}) == 2
    await wait_for(lambda: sample("whatsapp_inbound_published_total", None) == 3, what="confirmed")


async def test_an_inbound_stop_opts_the_sender_out_answered_once(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(
        topology, transport="neonize", optout_reply="Ok, you will get no more messages."
    )
    worker, client = await _connected(settings, start_worker)
    delete_after(settings)
    await trio.to_thread.run_sync(client.fire, incoming("Stop!", message_id="in-stop"))
    await wait_for(lambda: len(client.sent) == 1, what="the one answer")
    assert client.sent[0] == ("5511988887777", "Ok, you will get no more messages.")
    await trio.to_thread.run_sync(client.fire, incoming("STOP", message_id="in-stop-2"))
    await publish_many(
        settings,
        [
            job_body(1, destination="+55 11 98888-7777"),
            job_body(2, destination="+5511977776666"),
        ],
    )
    await wait_for(lambda: len(client.sent) == 2, what="the other job sent")
    await wait_for(
        lambda: job_metric(worker, "worker_jobs_failed_total", error_type="opted_out") == 1,
        what="opted_out",
    )
    dead = await drain_queue(settings, settings.dlq_name)
    assert [_code(m) for m in dead] == ["opted_out"]
    assert [to for to, _ in client.sent] == ["5511988887777", "5511977776666"]  # no job
    assert worker.metrics.registry.get_sample_value("whatsapp_optouts_total") == 1


async def test_the_unanswered_budget_holds_the_fourth_job_until_a_reply(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, transport="neonize", unanswered_limit=3)
    worker, client = await _connected(settings, start_worker)
    delete_after(settings)
    await publish_many(settings, [job_body(n) for n in range(4)])
    await wait_for(
        lambda: job_metric(worker, "worker_jobs_failed_total", error_type="unanswered_limit") == 1,
        what="the 4th held",
    )
    assert len(client.sent) == 3
    assert worker.metrics.registry.get_sample_value("whatsapp_unanswered_highest") == 3
    dead = await drain_queue(settings, settings.dlq_name)
    assert [_code(m) for m in dead] == ["unanswered_limit"]
    await trio.to_thread.run_sync(
        client.fire, incoming("obrigado!", number="5511999999999", message_id="in-r")
    )
    await wait_for(
        lambda: worker.metrics.registry.get_sample_value("whatsapp_unanswered_highest") == 0,
        what="the reply resets the count",
    )
    await publish_many(settings, [job_body(5)])
    await wait_for(lambda: len(client.sent) == 4, what="sent again after the reply")


async def test_the_unanswered_budget_can_delay_instead(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(
        topology, transport="neonize", unanswered_limit=1, unanswered_action="delay"
    )
    worker, client = await _connected(settings, start_worker)
    delete_after(settings)
    await publish_many(settings, [job_body(1), job_body(2)])
    await wait_for(
        lambda: (
            worker.metrics.registry.get_sample_value(
                "whatsapp_jobs_held_back_total", {"code": "unanswered_limit"}
            )
            == 1
        ),
        what="parked",
    )
    assert len(client.sent) == 1
    wait_queue = amqp.wait_queue_name(settings, LADDER[2])  # one hour
    assert await queue_count(settings, wait_queue) == 1
    assert await queue_count(settings, settings.dlq_name) == 0


async def test_463_dead_letters_and_pauses_new_contacts_only(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, transport="neonize")
    worker, client = await _connected(settings, start_worker)
    delete_after(settings)
    known = "5511955554444"
    await trio.to_thread.run_sync(client.fire, incoming("oi", number=known, message_id="k"))
    client.send_error = "server returned error 463"
    await publish_many(settings, [job_body(1, destination="+5511900000001")])
    await wait_for(
        lambda: (
            job_metric(worker, "worker_jobs_failed_total", error_type="reachout_timelocked") == 1
        ),
        what="463",
    )
    assert job_metric(worker, "worker_jobs_retried_total") == 0
    dead = await drain_queue(settings, settings.dlq_name)
    assert [_code(m) for m in dead] == ["reachout_timelocked"]
    client.send_error = None
    await publish_many(
        settings,
        [job_body(2, destination="+5511900000002"), job_body(3, destination=f"+{known}")],
    )
    await wait_for(lambda: len(client.sent) == 1, what="the known chat goes on")
    assert client.sent[0][0] == known
    await wait_for(
        lambda: (
            worker.metrics.registry.get_sample_value(
                "whatsapp_jobs_held_back_total", {"code": "reachout_paused"}
            )
            == 1
        ),
        what="the new contact parked",
    )
    paused = worker.metrics.registry.get_sample_value("whatsapp_reachout_paused_until_seconds")
    assert paused is not None and paused > trio.current_time()


async def test_a_temporary_ban_waits_for_its_end_then_reconnects(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, transport="neonize")
    worker, client = await _connected(settings, start_worker)
    transport = worker.transport
    delete_after(settings)
    ban = TemporaryBanEv(Code=TemporaryBanEv.BLOCKED_BY_USERS, Expire=2)
    await trio.to_thread.run_sync(client.fire, ban)
    await wait_for(lambda: transport.state is S.BANNED, what="banned")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert "temporarily banned" in health.json()["failing"]["whatsapp"]
    registry = worker.metrics.registry
    assert (registry.get_sample_value("whatsapp_banned_until_seconds") or 0) > 0
    assert registry.get_sample_value("whatsapp_state", {"state": "banned"}) == 1
    connects = client.connects
    with trio.move_on_after(1.0):  # no reconnect hammering during the ban
        await wait_for(lambda: client.connects > connects, what="nothing")
    assert client.connects == connects
    await wait_for(
        lambda: transport.statistics().attempts >= 2,  # type: ignore[attr-defined]
        timeout=10,
        what="a reconnect after the ban's end",
    )


async def test_stream_replaced_stops_and_turns_health_red(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(topology, transport="neonize")
    worker, client = await _connected(settings, start_worker)
    delete_after(settings)
    await trio.to_thread.run_sync(client.fire, StreamReplacedEv())
    await wait_for(lambda: worker.transport.state is S.DISCONNECTED, what="stopped")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        health = await http.get("/healthz")
    assert health.status_code == 503
    assert "another client connected" in health.json()["failing"]["whatsapp"]
    attempts = worker.transport.statistics().attempts  # type: ignore[attr-defined]
    with trio.move_on_after(0.5):
        await wait_for(lambda: False, what="nothing")
    assert worker.transport.statistics().attempts == attempts  # type: ignore[attr-defined]


async def test_the_restart_budget_ends_in_failed_until_relogin(
    delete_after: DeleteAfter, topology: Settings, start_worker: StartWorker
) -> None:
    settings = attrs.evolve(
        topology, transport="neonize", connect_max_failures=3, admin_token=TOKEN
    )
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(settings, clients, dial_error="dial tcp: refused")
    worker = await start_worker(settings, transport=transport)
    delete_after(settings)
    await wait_for(lambda: transport.state is S.FAILED, what="failed after 3")
    assert transport.failures_in_a_row == 3
    attempts = transport.statistics().attempts
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert "3 failed connects in a row" in health.json()["failing"]["whatsapp"]
        metrics = (await http.get("/metrics")).text
        assert 'whatsapp_state{state="failed"} 1.0' in metrics
        with trio.move_on_after(0.5):
            await wait_for(lambda: False, what="no more attempts")
        assert transport.statistics().attempts == attempts
        page = await http.get("/login", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "Try again" in page.text
        answer = await http.post("/login/relogin", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 303
    await wait_for(lambda: transport.statistics().attempts > attempts, what="connecting again")
