"""A message that is no longer true is never sent late (issue 15, the expiry part)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from neonize.events import ConnectedEv

from tests.conftest import StartWorker
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import (
    drain_queue,
    job_body,
    job_metric,
    publish_many,
    sent_records,
    wait_for,
)
from tests.helpers import (
    error_code as _code,
)
from tests.helpers import (
    failed_count as _failed,
)
from wa_trio.bus.amqp import retry_queue_name
from wa_trio.config.settings import Settings
from wa_trio.transport import ConnectionState as S


async def test_a_job_past_its_expiry_is_dead_lettered_never_sent(
    topology: Settings, start_worker: StartWorker
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    worker = await start_worker(topology)
    await publish_many(
        topology,
        [job_body(1, expires_at=past), job_body(2, expires_at=future, ttl_seconds=600)],
        message_ids=["late", "fresh"],
    )
    await wait_for(lambda: _failed(worker, "expired") == 1, what="expired")
    await wait_for(lambda: len(sent_records(topology.dry_run_file)) == 1, what="fresh sent")
    assert [r["job_key"] for r in sent_records(topology.dry_run_file)] == ["fresh"]
    [letter] = await drain_queue(topology, topology.dlq_name)
    assert _code(letter) == "expired"


async def test_a_job_that_expires_while_whatsapp_is_away_is_never_sent(
    topology: Settings, start_worker: StartWorker
) -> None:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(topology, clients)  # not connected yet
    worker = await start_worker(topology, transport=transport)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await publish_many(topology, [job_body(1, ttl_seconds=1)], message_ids=["otp"])
    await trio.sleep(1.2)  # the scenario: WhatsApp stays away longer than the code is valid
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    await wait_for(lambda: transport.state is S.CONNECTED, what="connected")
    await wait_for(lambda: _failed(worker, "expired") == 1, what="expired")
    assert clients[0].sent == []


async def test_a_retry_never_outlives_the_expiry(
    failing_topology: Settings, start_worker: StartWorker
) -> None:
    settings = failing_topology
    worker = await start_worker(settings)
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    await publish_many(settings, [job_body(1, expires_at=soon)], message_ids=["r"])
    await wait_for(lambda: _failed(worker, "expired") == 1, what="expired, not retried")
    assert await drain_queue(settings, retry_queue_name(settings, 60.0)) == []
    [letter] = await drain_queue(settings, settings.dlq_name)
    assert _code(letter) == "expired"


async def test_a_retry_copy_carries_the_deadline(
    failing_topology: Settings, start_worker: StartWorker
) -> None:
    settings = failing_topology
    worker = await start_worker(settings)
    await publish_many(settings, [job_body(1, ttl_seconds=3600)], message_ids=["t"])
    await wait_for(
        lambda: (job_metric(worker, "worker_jobs_retried_total") or 0) == 1, what="retried"
    )
    [copy] = await drain_queue(settings, retry_queue_name(settings, 60.0))
    carried = float(copy.header.headers["x-expires-at"])
    assert abs(carried - (datetime.now(UTC).timestamp() + 3600)) < 60
