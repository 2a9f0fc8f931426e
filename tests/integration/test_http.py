"""/healthz, /readyz and /metrics with a real HTTP client against a real worker and broker."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio
from neonize.events import ConnectedEv
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartWorker, closed_port
from tests.fakes import FakeClient, fake_neonize_transport
from tests.helpers import job_body, publish_many, rabbitmqctl, wait_for
from wa_trio.config.settings import Settings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_healthz_is_200_with_checks_while_broker_up(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    await wait_for(lambda: worker.pipeline.connected, what="consumer up")
    await wait_for(lambda: worker.monitor.statistics().up, what="monitor up")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        response = await http.get("/healthz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["failing"] == {}
        assert set(body["ok"]) == {"amqp_consumer", "broker"}
        assert body["whatsapp"] == "connected"  # dry-run is always connected
        ready = await http.get("/readyz")
        assert ready.status_code == 200


async def test_healthz_is_503_when_broker_unreachable(
    make_env: Callable[..., dict[str, str]], start_worker: StartWorker
) -> None:
    settings = Settings.from_env(
        make_env(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    )
    worker = await start_worker(settings)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        response = await http.get("/healthz")
        assert response.status_code == 503
        failing = response.json()["failing"]
        assert "amqp_consumer" in failing and "broker" in failing
        assert (await http.get("/readyz")).status_code == 503
        metrics = samples((await http.get("/metrics")).text)
        assert value(metrics, "amqp_connected") == 0


async def test_probe_storm_reaches_broker_at_most_once(
    topology: Settings, start_worker: StartWorker
) -> None:
    worker = await start_worker(topology)
    await wait_for(lambda: worker.monitor.statistics().up, what="monitor up")
    before = worker.monitor.statistics().probes
    codes: list[int] = []
    started = trio.current_time()
    async with httpx.AsyncClient(base_url=worker.http_url, timeout=30) as http:

        async def probe() -> None:
            codes.append((await http.get("/healthz")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(probe)
    print(f"\n100 probes took {trio.current_time() - started:.3f}s")
    assert codes == [200] * 100
    assert worker.monitor.statistics().probes - before <= 1


async def test_counters_move_by_exactly_the_jobs_published(
    topology: Settings, start_worker: StartWorker
) -> None:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(topology, clients, not_on_whatsapp={"+5511900000000"})
    worker = await start_worker(topology, transport=transport)
    await wait_for(lambda: bool(clients) and clients[0].connects >= 1, what="client")
    await trio.to_thread.run_sync(clients[0].fire, ConnectedEv())
    valid = [job_body(i) for i in range(7)]
    invalid = [b"{", job_body(destination="12"), job_body(text_message="")]
    failed = [job_body(i, destination="+5511900000000") for i in range(2)]
    await publish_many(topology, valid + invalid + failed)
    async with httpx.AsyncClient(base_url=worker.http_url) as http:

        async def done() -> bool:
            m = samples((await http.get("/metrics")).text)
            total = sum(
                value(m, "worker_jobs_processed_total", worker="whatsapp", status=s)
                for s in ("success", "invalid", "failed")
            )
            return total == 12

        await wait_for(done, what="12 jobs processed")
        m = samples((await http.get("/metrics")).text)
    w = {"worker": "whatsapp"}
    assert value(m, "worker_jobs_processed_total", status="success", **w) == 7
    assert value(m, "worker_jobs_processed_total", status="invalid", **w) == 3
    assert value(m, "worker_jobs_processed_total", status="failed", **w) == 2
    assert value(m, "worker_jobs_processed_total", status="retried", **w) == 0
    assert value(m, "worker_jobs_failed_total", error_type="invalid_json", **w) == 1
    assert value(m, "worker_jobs_failed_total", error_type="invalid_destination", **w) == 1
    assert value(m, "worker_jobs_failed_total", error_type="empty_text", **w) == 1
    assert value(m, "worker_jobs_failed_total", error_type="not_on_whatsapp", **w) == 2
    assert value(m, "worker_job_duration_seconds_count", **w) == 12
    assert value(m, "whatsapp_send_duration_seconds_count") == 7
    assert value(m, "whatsapp_connected") == 1
    assert value(m, "amqp_connected") == 1
    assert value(m, "wa_trio_build_info", version="0.1.0", worker="whatsapp") == 1
    # no label carries a phone number or a user id
    for name, labels in m:
        for label, label_value in labels:
            if label != "queue_name":  # our test queue names are random
                assert not re.search(r"\d{8,}", label_value), (name, labels)
            assert "6b1d5e9c" not in label_value


async def test_queue_depth_matches_the_brokers_count(
    topology: Settings, start_worker: StartWorker
) -> None:
    clients: list[FakeClient] = []
    transport = fake_neonize_transport(topology, clients)  # never connected: jobs stay queued
    worker = await start_worker(topology, transport=transport)
    await publish_many(topology, [job_body(i) for i in range(10)])
    await wait_for(lambda: worker.monitor.statistics().up, what="monitor up")

    def broker_ready() -> int:
        out = rabbitmqctl("list_queues", "name", "messages_ready")
        match = re.search(rf"^{re.escape(topology.queue_name)}\s+(\d+)$", out, re.MULTILINE)
        assert match, out
        return int(match.group(1))

    await wait_for(lambda: broker_ready() == 10 - topology.prefetch_count, what="settled")
    worker.monitor.sample_now()
    async with httpx.AsyncClient(base_url=worker.http_url) as http:

        async def sampled() -> bool:
            m = samples((await http.get("/metrics")).text)
            return value(m, "queue_depth", queue_name=topology.queue_name) == broker_ready()

        await wait_for(sampled, what="queue_depth == broker count")
        m = samples((await http.get("/metrics")).text)
        assert value(m, "queue_dlq_size", queue_name=topology.dlq_name) == 0
        assert value(m, "whatsapp_connected") == 0
        body = (await http.get("/healthz")).json()
        assert body["whatsapp"] == "connecting"
        assert (await http.get("/readyz")).status_code == 503


async def _is(status: Callable[[], Awaitable[int]], code: int) -> bool:
    return await status() == code
