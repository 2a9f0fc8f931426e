"""A three-node RabbitMQ cluster of the suite's own (issue 34): quorum queues, the worker given
every node in RABBITMQ_URL. The node leading the job queue is stopped in the middle of 5,000
jobs; then the worker's node is cut off by the network (a relay in front of it goes silent).
Every job is sent, none twice, and the worker is never restarted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import trio

from tests.conftest import StartWorker
from tests.fault.cluster import Cluster, Relay, three_nodes
from tests.helpers import SlowDryRun, job_body, publish_many, sent_records, stop_worker, wait_for
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor

TOTAL = 5000


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with three_nodes() as nodes:
        yield nodes


def _sent(settings: Settings) -> Counter[str]:
    return Counter(r["job_key"] for r in sent_records(settings.dry_run_file))


async def _run(
    settings: Settings, start_worker: StartWorker, fault: Callable[[], None]
) -> tuple[int, int]:
    """5,000 jobs through a worker; ``fault`` a quarter of the way; every job once after. The
    worker's broker connections made before the fault and at the end."""
    ids = [f"c-{i}" for i in range(TOTAL)]
    await publish_many(settings, (job_body(i) for i in range(TOTAL)), message_ids=ids)
    worker = await start_worker(
        settings, transport=SlowDryRun(settings.dry_run_file, Redactor(True))
    )
    try:
        await wait_for(lambda: len(_sent(settings)) >= TOTAL // 4, what="a quarter", timeout=120)
        connections = worker.pipeline.statistics().connections
        fault()
        await wait_for(lambda: len(_sent(settings)) >= TOTAL, what="every job", timeout=240)
        await trio.sleep(1.0)  # a duplicate would come now
        sent = _sent(settings)
        assert set(sent) == set(ids)  # every job
        assert max(sent.values()) == 1  # none twice
        assert worker.pipeline.connected  # the same worker, never restarted
        return connections, worker.pipeline.statistics().connections
    finally:
        with trio.move_on_after(30):
            await stop_worker(worker)


async def test_stopping_the_node_that_leads_the_job_queue(
    cluster: Cluster, make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(
        make_env(
            RABBITMQ_URL=cluster.url, WHATSAPP_QUEUE_TYPE="quorum", WHATSAPP_PREFETCH_COUNT="50"
        )
    )
    stopped: list[str] = []

    def stop_leader() -> None:
        leader = cluster.leader(settings.queue_name)
        cluster.node(leader).ctl("stop_app")
        stopped.append(leader)

    try:
        before, after = await _run(settings, start_worker, stop_leader)
        assert cluster.leader(settings.queue_name) != stopped[0]  # a new leader took over
        if stopped[0] == cluster.nodes[0].node:  # it was the worker's node (client-local)
            assert after > before  # the worker moved to another node, in place
    finally:
        for name in stopped:
            cluster.node(name).ctl("start_app")


async def test_a_network_cut_to_the_workers_node(
    cluster: Cluster,
    make_env: Callable[..., dict[str, str]],
    start_worker: StartWorker,
    nursery: trio.Nursery,
) -> None:
    relay = Relay(cluster.nodes[0].port)
    await nursery.start(relay.run)
    others = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes[1:])
    url = f"amqp://guest:guest@127.0.0.1:{relay.port},{others}/"  # the worker's node first
    settings = Settings.from_env(
        make_env(RABBITMQ_URL=url, WHATSAPP_QUEUE_TYPE="quorum", WHATSAPP_PREFETCH_COUNT="50")
    )
    before, after = await _run(settings, start_worker, relay.cut)
    assert after > before  # it noticed the silence (heartbeats) and moved to another node
