"""Accounts of one process share its AMQP connections (issue 34, ``bus.shared``): channels on a
jobs and an events connection instead of four connections per account; a shared connection
lost mid-stream is opened again and every account goes on, nothing sent twice; one account's
channel error leaves the others' channels alone; a refused login is still the one-line error.
The machine's broker, queues of the test's own."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

import attrs
import pytest
import trio

from tests.helpers import (
    delete_topology,
    job_body,
    publish_many,
    rabbitmqctl,
    sent_records,
    tcp_peers,
)
from tests.helpers import wait_for as _wait_for
from wa_trio.accounts.multi import Accounts
from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, BrokerError, Properties
from wa_trio.bus.shared import Role, SharedConnections
from wa_trio.config.settings import Settings
from wa_trio.core.errors import BrokerRefusedError
from wa_trio.run import run_worker

AMQP_PORT = 5672


def our_amqp_ports() -> set[int]:
    """The local ports of this process's connections to the broker."""
    return tcp_peers(os.getpid(), AMQP_PORT)


def broker_connections(ports: set[int]) -> dict[int, tuple[str, int]]:
    """The broker's view of our connections: local port -> (connection pid, channels)."""
    listed = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "peer_port", "pid", "channels"
    )
    found = {}
    for line in listed.splitlines():
        port, pid, channels = line.split("\t")
        if int(port) in ports:
            found[int(port)] = (pid, int(channels))
    return found


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    await _wait_for(condition, what=what, timeout=60)


@pytest.fixture
async def three(make_env: Callable[..., dict[str, str]]) -> AsyncIterator[Settings]:
    """Three dry-run accounts, each paced at 100 sends a second."""
    settings = Settings.from_env(
        make_env(WHATSAPP_ACCOUNTS="a,b,c", WHATSAPP_RATE_LIMIT="100/s", WHATSAPP_RATE_BURST="1")
    )
    yield settings
    for name in settings.accounts:
        await delete_topology(settings.for_account(name))
    await delete_topology(settings)


async def _start(settings: Settings, nursery: trio.Nursery) -> Accounts:
    accounts: Accounts = await nursery.start(
        lambda task_status: run_worker(settings, handle_signals=False, task_status=task_status)
    )
    await wait_for(
        lambda: (
            len(accounts.workers) == 3
            and all(worker.pipeline.connected for worker in accounts.workers.values())
        ),
        "three accounts consuming",
    )
    return accounts


def _texts(settings: Settings) -> Counter[str]:
    return Counter(record["text_message"] for record in sent_records(settings.dry_run_file))


async def test_three_accounts_share_one_jobs_and_one_events_connection(
    three: Settings, nursery: trio.Nursery
) -> None:
    """Before: 13 connections (4 per account and the router's); now 2, with every account's
    channels on them."""
    accounts = await _start(three, nursery)
    recipients = [f"+55119{n:08d}" for n in range(60)]
    await publish_many(three, [job_body(n, destination=r) for n, r in enumerate(recipients)])
    await wait_for(lambda: len(sent_records(three.dry_run_file)) == 60, "60 sends")
    assert {record["account"] for record in sent_records(three.dry_run_file)} == {"a", "b", "c"}
    ports = our_amqp_ports()
    assert len(ports) == 2
    seen = await trio.to_thread.run_sync(broker_connections, ports)
    assert len(seen) == 2
    # per account: consume + publish-copies + monitor; 8 status and 8 inbound lanes
    assert sum(channels for _, channels in seen.values()) >= 3 * (3 + 16)
    assert accounts.connections is not None
    assert accounts.connections.statistics().open == 2
    accounts.stop()


async def test_a_lost_shared_connection_is_opened_again_and_nothing_is_sent_twice(
    three: Settings, nursery: trio.Nursery
) -> None:
    accounts = await _start(three, nursery)
    assert accounts.connections is not None
    recipients = [f"+55119{n:08d}" for n in range(90)]
    bodies = [job_body(n, destination=recipients[n % 90]) for n in range(900)]
    await publish_many(three, bodies)
    await wait_for(lambda: len(sent_records(three.dry_run_file)) >= 150, "150 sends")
    ports = our_amqp_ports()
    seen = await trio.to_thread.run_sync(broker_connections, ports)
    assert len(seen) == 2
    for pid, _ in seen.values():  # both: the jobs' and the events'
        await trio.to_thread.run_sync(rabbitmqctl, "close_connection", pid, "test: cut")
    sent_at_cut = len(sent_records(three.dry_run_file))
    assert sent_at_cut < 900  # the cut came mid-stream
    await wait_for(lambda: len(sent_records(three.dry_run_file)) >= 900, "900 sends")
    await trio.sleep(1)  # a redelivered job would be sent again by now
    texts = _texts(three)
    assert len(texts) == 900 and max(texts.values()) == 1  # every job, none twice
    late = sent_records(three.dry_run_file)[sent_at_cut + 30 :]
    assert {record["account"] for record in late} == {"a", "b", "c"}  # all went on
    statistics = accounts.connections.statistics()
    assert statistics.open == 2 and statistics.opened >= 4
    assert our_amqp_ports().isdisjoint(ports)  # new connections, the same process
    accounts.stop()


async def test_a_channel_error_of_one_borrower_leaves_the_others_alone(
    settings: Settings, nursery: trio.Nursery
) -> None:
    """A passive declare of a missing queue closes that borrower's channel (404): it sees
    BrokerError; another borrower's channel on the same connection publishes on."""
    hub = SharedConnections(BrokerAddress.from_settings(settings))
    await nursery.start(hub.run)
    async with hub.borrow("jobs", 0) as connection, connection.open_channel() as channel:
        queue = await amqp.listen(channel, "amq.topic", "test.shared.nobody")
        with pytest.raises(BrokerError, match="NOT_FOUND"):
            async with hub.borrow("jobs", 0) as other, other.open_channel() as failing:
                await amqp.queue_message_count(failing, f"{settings.queue_name}.missing")
        await amqp.publish(channel, "amq.topic", "test.shared.nobody", b"still here", Properties())
        message = await amqp.get(channel, queue, auto_ack=True)
        assert message is not None and message.body == b"still here"
    statistics = hub.statistics()
    assert (statistics.open, statistics.opened, statistics.borrows) == (1, 1, 0)
    nursery.cancel_scope.cancel()


async def test_channels_given_up_while_opening_leave_the_shared_connection_whole(
    settings: Settings, nursery: trio.Nursery
) -> None:
    """Accounts stopped while opening their channel (a lease lost, a move): the broker
    opened what serena forgot, then its open-ok ended the connection's reader with KeyError
    (the process of 200 accounts with it) or the id's next open was refused. The patched
    open closes what it gave up: the connection stays, and its ids are free again."""
    hub = SharedConnections(BrokerAddress.from_settings(settings))
    await nursery.start(hub.run)
    rng = random.Random(34)
    given_up = 0
    async with hub.borrow("jobs", 0) as connection:
        for _ in range(200):
            with trio.move_on_after(rng.uniform(0, 0.003)) as scope:
                async with connection.open_channel():
                    await trio.sleep(0.01)
            given_up += scope.cancelled_caught
        await trio.sleep(0.3)  # the open-oks and close-oks of the last ones come in
        async with connection.open_channel() as channel:
            queue = await amqp.listen(channel, "amq.topic", "test.shared.given-up")
            await amqp.publish(channel, "amq.topic", "test.shared.given-up", b"x", Properties())
            message = await amqp.get(channel, queue, auto_ack=True)
            assert message is not None and message.body == b"x"
            assert channel.id <= 2  # the given-up ids were freed, not leaked
    assert given_up >= 20  # the race was run, not missed
    statistics = hub.statistics()
    assert (statistics.open, statistics.opened) == (1, 1)
    nursery.cancel_scope.cancel()


async def test_a_refused_login_reaches_every_borrower_as_the_one_line_error(
    settings: Settings, nursery: trio.Nursery
) -> None:
    address = BrokerAddress.from_settings(settings)
    hub = SharedConnections(attrs.evolve(address, password="wrong"))
    await nursery.start(hub.run)
    roles: list[Role] = ["jobs", "jobs", "events"]  # the second: the failure remembered
    for role in roles:
        with pytest.raises(BrokerRefusedError, match="refused the login of user 'guest'"):
            async with hub.borrow(role, 0):
                raise AssertionError("borrowed a connection with the wrong password")
    nursery.cancel_scope.cancel()
