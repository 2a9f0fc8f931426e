"""Several accounts in one process (issue 16): pinned and pool routing, an unknown account, an
account going down mid-stream, per-account health and metrics. The real broker; dry-run sinks
(each line records its account) and, for the account that goes down, the neonize adapter on the
client double."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable

import attrs
import httpx
import pytest
import trio
from neonize.events import ConnectedEv, DisconnectedEv, MessageEv
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    delete_topology,
    drain_queue,
    job_body,
    publish_many,
    queue_count,
    sent_records,
    wait_for,
)
from tests.helpers import (
    error_code as _code,
)
from wa_trio.accounts.multi import Accounts, run_accounts
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.transport import ConnectionState as S
from wa_trio.transport import Transport


@pytest.fixture(params=["sqlite", "postgresql"])
async def three(
    make_env: Callable[..., dict[str, str]], request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    """Three accounts on either store (PostgreSQL: a database of the test's own)."""
    store = (
        {"WHATSAPP_STORE": request.getfixturevalue("pg_store")} if request.param != "sqlite" else {}
    )
    settings = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="a,b,c", **store))
    yield settings
    for name in settings.accounts:
        await delete_topology(settings.for_account(name))
    await delete_topology(settings)


async def _with_neonize(
    settings: Settings, nursery: trio.Nursery, names: tuple[str, ...]
) -> tuple[Accounts, list[FakeClient], dict[str, Transport]]:
    """``settings``' accounts running, those of ``names`` on the neonize adapter over the client
    double (the clients it creates, in order; the transports by name), the others dry-run."""
    clients: list[FakeClient] = []
    transports: dict[str, Transport] = {
        name: fake_neonize_transport(
            attrs.evolve(settings.for_account(name), transport="neonize"), clients
        )
        for name in names
    }
    accounts: Accounts = await nursery.start(
        lambda task_status: run_accounts(
            settings,
            run_worker,
            transports=transports,
            handle_signals=False,
            task_status=task_status,
        )
    )
    return accounts, clients, transports


async def test_pool_pinned_and_unknown_routing(three: Settings, nursery: trio.Nursery) -> None:
    settings = three
    accounts: Accounts = await nursery.start(
        lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
    )
    await wait_for(lambda: len(accounts.workers) == 3, what="three accounts")
    recipients = [f"+55119{n:08d}" for n in range(100)]
    bodies = [job_body(i, destination=number) for i in range(3) for number in recipients]
    bodies.append(job_body(900, destination="+5511988887777", account="b"))
    bodies.append(job_body(901, destination="+5511988887777", account="nobody"))
    await publish_many(settings, bodies)
    async with (  # a publisher pinning account c by routing key
        amqp.connect(BrokerAddress.from_settings(settings)) as connection,
        connection.open_channel() as channel,
    ):
        await amqp.publish(
            channel,
            settings.exchange,
            f"{settings.routing_key}.c",
            job_body(902, destination="+5511988887777"),
            Properties(message_id="pinned-c"),
        )
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 302, what="302 sends")
    records = sent_records(settings.dry_run_file)
    served: dict[str, set[str]] = defaultdict(set)
    for record in records:
        served[record["destination"]].add(record["account"])
    assert all(len(served[number]) == 1 for number in recipients)  # one account a recipient
    spread = Counter(next(iter(served[number])) for number in recipients)
    assert set(spread) == {"a", "b", "c"}
    by_text = {r["text_message"]: r["account"] for r in records}
    assert by_text["job 900"] == "b" and by_text["job 902"] == "c"
    dead = await drain_queue(settings, settings.dlq_name)
    assert [_code(m) for m in dead] == ["unknown_account"]
    async with httpx.AsyncClient(base_url=accounts.http_url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert set(health.json()["accounts"]) == {"a", "b", "c"}
        assert (await http.get("/readyz")).status_code == 200
        text = (await http.get("/metrics")).text
    for name in ("a", "b", "c"):
        assert f'account="{name}"' in text
    assert 'whatsapp_pool_forwarded_total{account="a"' in text
    accounts.stop()


async def test_an_account_going_down_sends_its_pool_jobs_elsewhere_and_keeps_its_own(
    three: Settings, nursery: trio.Nursery
) -> None:
    settings = attrs.evolve(three, accounts=("a", "b"))
    accounts, clients, transports = await _with_neonize(settings, nursery, ("b",))
    b = transports["b"]
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="b's client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: b.state is S.CONNECTED and len(accounts.workers) == 2, what="both up")
    recipients = [f"+55119{n:08d}" for n in range(40)]
    await publish_many(settings, [job_body(n, destination=r) for n, r in enumerate(recipients)])
    await wait_for(
        lambda: len(sent_records(settings.dry_run_file)) + len(clients[0].sent) == 40,
        what="the first 40",
    )
    on_b = {"+" + to for to, _ in clients[0].sent}
    assert on_b and len(on_b) < 40  # rendezvous gave b a share
    await trio.to_thread.run_sync(clients[0].fire, DisconnectedEv())  # b goes down
    await wait_for(lambda: b.state is S.DISCONNECTED, what="b down")
    sent_by_b = len(clients[0].sent)
    await publish_many(
        settings,
        [job_body(100 + n, destination=r) for n, r in enumerate(recipients)]
        + [job_body(999, destination="+5511988887777", account="b")],
    )
    await wait_for(lambda: len(sent_records(settings.dry_run_file)) == 80 - sent_by_b, what="a")
    later = sent_records(settings.dry_run_file)
    assert {r["destination"] for r in later} >= on_b  # b's recipients moved to a
    assert len(clients[0].sent) == sent_by_b  # nothing more through b
    assert await queue_count(settings.for_account("b"), settings.for_account("b").queue_name) <= 1
    assert await queue_count(settings, settings.dlq_name) == 0  # its pinned job waits
    # a STOP to one account stops them all: b hears it, a refuses the next job to that number
    stop = MessageEv(
        Info=MessageInfo(
            MessageSource=MessageSource(
                Chat=JID(User="5511977776666", Server="s.whatsapp.net"),
                Sender=JID(User="5511977776666", Server="s.whatsapp.net"),
            ),
            ID="in-stop",
            Timestamp=1764111111000,  # ms, as goneonize EncodeMessageInfo encodes it
        ),
        Message=e2e.Message(conversation="STOP"),
    )
    await trio.to_thread.run_sync(clients[0].fire, stop)
    sent_now = len(sent_records(settings.dry_run_file))
    await trio.sleep(2.5)  # b's flush (1 s), then a's reload (1 s)
    await publish_many(settings, [job_body(7, destination="+5511977776666", account="a")])

    async def dead_lettered() -> bool:
        return await queue_count(settings, settings.dlq_name) > 0

    await wait_for(dead_lettered, what="dead-lettered")

    async def dead_codes() -> list[str]:
        return [_code(m) for m in await drain_queue(settings, settings.dlq_name)]

    assert await dead_codes() == ["opted_out"]
    assert len(sent_records(settings.dry_run_file)) == sent_now
    accounts.stop()


async def test_a_process_with_no_account_connected_leaves_the_pool_to_the_others(
    three: Settings, nursery: trio.Nursery
) -> None:
    """A replica standing by for every account (or with all of them down) must not hold a pool
    job in its router: before, it kept one unacked until it got an account (found by the
    rolling-restart bench: one job of 6,600 waited there for the whole run)."""
    settings = attrs.evolve(three, accounts=("a", "b"))
    accounts, clients, _ = await _with_neonize(settings, nursery, ("a", "b"))
    await wait_for(lambda: len(clients) == 2, what="both clients")
    await publish_many(settings, [job_body(1, destination="+5511977770001")])
    await trio.sleep(2.5)  # the router looks once a second

    async def ready() -> int:
        return await queue_count(settings, settings.queue_name)

    assert await ready() == 1  # in the pool, ready for another replica's router
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: sum(len(c.sent) for c in clients) == 1, what="sent once up")
    assert await ready() == 0
    accounts.stop()
