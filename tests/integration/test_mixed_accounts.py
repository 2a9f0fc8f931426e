"""Accounts of both transports in one process (issue 33): WHATSAPP_ACCOUNTS=shop:neonize,
api:cloud-api on the real broker, shop on the neonize adapter over the client double, api on
the real Cloud API transport against the fake Graph on loopback. The pool routes each job to an
account that can send it; WHATSAPP_FALLBACK=cloud-api hands a logged-out shop's job that has a
Cloud API form to api, once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema
import pytest
import trio
from neonize.events import ConnectedEv, DisconnectedEv, LoggedOutEv

from tests.fake_graph import FakeGraph, dump
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    EventTap,
    delete_topology,
    drain_queue,
    error_code,
    job_body,
    publish_many,
    queue_count,
    wait_for,
)
from tests.integration.test_cloud_api import _settings, meta_body, post_signed
from tests.integration.test_status_events import SCHEMA
from wa_trio.accounts.multi import Accounts, run_accounts
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.transport import ConnectionState as S

TEMPLATE = {"name": "order_update", "language": "en_US"}


@pytest.fixture
async def graph(nursery: trio.Nursery) -> FakeGraph:
    fake = FakeGraph()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def mixed(
    make_env: Callable[..., dict[str, str]], graph: FakeGraph
) -> AsyncIterator[Settings]:
    settings = _settings(
        make_env,
        graph,
        WHATSAPP_ACCOUNTS="shop:neonize,api:cloud-api",  # each names its own transport
        WHATSAPP_FALLBACK="cloud-api",
        WHATSAPP_RATE_LIMIT="off",
    )
    yield settings
    for name in settings.accounts:
        await delete_topology(settings.for_account(name))
    await delete_topology(settings)


async def _start(settings: Settings, nursery: trio.Nursery) -> tuple[Accounts, list[FakeClient]]:
    clients: list[FakeClient] = []
    shop = fake_neonize_transport(settings.for_account("shop"), clients)
    accounts: Accounts = await nursery.start(
        lambda task_status: run_accounts(
            settings,
            run_worker,
            transports={"shop": shop},
            handle_signals=False,
            task_status=task_status,
        )
    )
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="shop's client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(
        lambda: (
            len(accounts.workers) == 2
            and all(w.transport.state is S.CONNECTED for w in accounts.workers.values())
        ),
        what="both accounts connected",
    )
    return accounts, clients


def _job(n: int, to: str, **fields: Any) -> bytes:
    return job_body(n, destination=to, **fields)


def _to(graph: FakeGraph, kind: str) -> list[str]:
    return ["+" + send["to"] for send in graph.sends if send["type"] == kind]


async def test_the_pool_routes_by_what_each_account_can_send(
    mixed: Settings, graph: FakeGraph, nursery: trio.Nursery
) -> None:
    settings = mixed
    accounts, clients = await _start(settings, nursery)
    shop = clients[0]
    alone = {"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f", "cloud_template": TEMPLATE}
    cloud_only = [dump({**alone, "destination": f"+5511910000{n:03d}"}) for n in range(20)]
    texts = [_job(n, f"+5511920000{n:03d}") for n in range(20)]
    both = [_job(n, f"+5511930000{n:03d}", cloud_template=TEMPLATE) for n in range(40)]
    await publish_many(settings, cloud_only + texts + both)
    await wait_for(lambda: len(graph.sends) + len(shop.sent) == 80, what="80 sends")
    # a template alone only through the Cloud API; free text never outside a window
    assert sorted(_to(graph, "template")) >= sorted(f"+5511910000{n:03d}" for n in range(20))
    assert _to(graph, "text") == []
    assert {"+" + to for to, _ in shop.sent} >= {f"+5511920000{n:03d}" for n in range(20)}
    # a job with both forms: rendezvous over both accounts (a template there, text here)
    via_api = {to for to in _to(graph, "template") if to.startswith("+55119300")}
    via_shop = {"+" + to for to, _ in shop.sent if to.startswith("55119300")}
    assert via_api and via_shop and len(via_api | via_shop) == 40

    # the customer-service window: a person who wrote to api may get free text there
    await trio.to_thread.run_sync(shop.fire, DisconnectedEv())
    await wait_for(lambda: accounts.workers["shop"].transport.state is S.DISCONNECTED, what="down")
    wrote = {"from": "5511940000001", "id": "wamid.in1", "timestamp": "1764111111",
             "type": "text", "text": {"body": "hello"}}  # fmt: skip
    body = dump(meta_body({"messaging_product": "whatsapp", "messages": [wrote]}))
    assert await post_signed(accounts.http_url, body) == 200  # the process's one server
    await wait_for(
        lambda: accounts.workers["api"].safety.window_open("+5511940000001"), what="heard"
    )
    await publish_many(settings, [_job(1, "+5511940000001"), _job(2, "+5511940000002")])
    await wait_for(lambda: _to(graph, "text") == ["+5511940000001"], what="text in the window")
    await trio.sleep(1.5)  # the other waits in the pool: no account can send it now
    assert await queue_count(settings, settings.queue_name) == 0  # the router holds it unacked
    assert _to(graph, "text") == ["+5511940000001"]
    sent_before = len(shop.sent)
    await trio.to_thread.run_sync(shop.fire, ConnectedEv())
    await wait_for(lambda: len(shop.sent) == sent_before + 1, what="shop sends the other")
    assert shop.sent[-1][0] == "5511940000002"

    # pinned: a template alone to the neonize account is refused by its validation
    await publish_many(settings, [dump({**alone, "destination": "+1", "account": "shop"})])

    async def dead() -> bool:
        return await queue_count(settings, settings.dlq_name) == 1

    await wait_for(dead, what="dead-lettered")
    letters = await drain_queue(settings, settings.dlq_name)
    assert [error_code(m) for m in letters] == ["cloud_template_unsupported"]
    accounts.stop()


async def test_a_logged_out_neonize_account_falls_back_to_the_cloud_api_once(
    mixed: Settings, graph: FakeGraph, nursery: trio.Nursery
) -> None:
    settings = mixed
    tap = EventTap(settings)
    await tap.bind()
    accounts, clients = await _start(settings, nursery)
    shop = accounts.workers["shop"]
    await trio.to_thread.run_sync(clients[0].fire, LoggedOutEv(OnConnect=False, Reason=2))
    await wait_for(lambda: shop.transport.state is S.LOGGED_OUT, what="logged out")
    form = {"cloud_template": TEMPLATE, "account": "shop"}
    await publish_many(
        settings,
        [_job(1, "+5511950000001", **form), _job(1, "+5511950000001", **form)],
        message_ids=["fb-1", "fb-1"],  # the second: a publisher's retry of the same job
    )
    await wait_for(lambda: len(graph.sends) == 1, what="the fallback send")
    await publish_many(settings, [_job(2, "+5511950000002", account="shop")], ["fb-2"])
    await wait_for(lambda: tap.at_least(1), what="its sent event")
    await trio.sleep(1.0)  # anything more would have come by now
    assert [s["type"] for s in graph.sends] == ["template"]  # once, and never the text
    assert graph.sends[0]["to"] == "5511950000001"
    assert clients[0].sent == []
    [event] = tap.events
    assert event["status"] == "sent" and event["job_key"] == "fb-1"
    assert event["fallback_from"] == "shop"
    jsonschema.validate(event, SCHEMA)
    row = await shop.ledger.get("fb-1")
    assert row is not None and (row.state, row.whatsapp_id) == ("forwarded", "api")
    api_row = await accounts.workers["api"].ledger.get("fb-1")
    assert api_row is not None and api_row.state == "sent"
    # a job with no Cloud API form waits for shop in hand: not sent, not dead-lettered
    assert await queue_count(settings, settings.dlq_name) == 0
    assert await shop.ledger.get("fb-2") is None
    assert (
        shop.metrics.registry.get_sample_value(
            "worker_jobs_processed_total", {"worker": "whatsapp", "status": "forwarded"}
        )
        == 1
    )
    accounts.stop()
