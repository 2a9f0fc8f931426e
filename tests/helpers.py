"""Helpers for integration tests: broker admin, publishing, waiting with deadlines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress, Properties
from wa_trio.config.settings import Settings
from wa_trio.core.schedule import LADDER
from wa_trio.metrics import WORKER
from wa_trio.transport import OutgoingMessage, SendResult
from wa_trio.transport.dry_run import DryRunTransport
from wa_trio.worker.app import Worker

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


def job_body(n: int = 0, **fields: Any) -> bytes:
    job: dict[str, Any] = {
        "user_id": UID,
        "text_message": f"job {n}",
        "destination": "+5511999999999",
    }
    job.update(fields)
    return json.dumps(job).encode()


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that fall in any span of ``window`` seconds."""
    times = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    with trio.move_on_after(timeout) as scope:
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(interval)
    if scope.cancelled_caught:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def publish_many(
    settings: Settings,
    bodies: Iterable[bytes],
    message_ids: Iterable[str | None] | None = None,
    headers: dict[str, Any] | None = None,
) -> int:
    count = 0
    ids = iter(message_ids) if message_ids is not None else None
    async with amqp.connect(BrokerAddress.from_settings(settings)) as connection:
        await amqp.declare_topology(connection, settings)
        async with connection.open_channel() as channel:
            for body in bodies:
                message_id = next(ids) if ids is not None else str(uuid.uuid4())
                await amqp.publish(
                    channel,
                    settings.exchange,
                    settings.routing_key,
                    body,
                    Properties(message_id=message_id, headers=dict(headers or {})),
                )
                count += 1
    return count


async def drain_queue(settings: Settings, queue: str) -> list[Any]:
    """basic.get every message of ``queue`` (acked: removed)."""
    messages: list[Any] = []
    async with (
        amqp.connect(BrokerAddress.from_settings(settings)) as connection,
        connection.open_channel() as channel,
    ):
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if message is None:
                return messages
            messages.append(message)


def job_metric(worker: Worker, name: str, **labels: str) -> float | None:
    """A ``worker_*`` metric sample of a running worker (its ``worker`` label filled in)."""
    return worker.metrics.registry.get_sample_value(name, {"worker": WORKER, **labels})


def failed_count(worker: Worker, code: str) -> float:
    """``worker_jobs_failed_total`` for one error code (0 when never counted)."""
    return job_metric(worker, "worker_jobs_failed_total", error_type=code) or 0.0


def sample(worker: Worker, name: str, **labels: str) -> float:
    """A metric sample of a running worker without the ``worker`` label (0 when absent)."""
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def error_code(message: Any) -> str:
    """The ``x-error-code`` of a dead-lettered message (bytes or text, as the client gives)."""
    value = message.header.headers["x-error-code"]
    return value.decode() if isinstance(value, bytes) else str(value)


async def queue_count(settings: Settings, queue: str) -> int:
    async with (
        amqp.connect(BrokerAddress.from_settings(settings)) as connection,
        connection.open_channel() as channel,
    ):
        return await amqp.queue_message_count(channel, queue)


async def delete_topology(settings: Settings, extra_queues: Iterable[str] = ()) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        async with (
            amqp.connect(BrokerAddress.from_settings(settings)) as connection,
            connection.open_channel() as channel,
        ):
            delays = [amqp.retry_queue_name(settings, d) for d in set(settings.retry_delays)]
            delays += [amqp.wait_queue_name(settings, d) for d in LADDER]
            taps = [EventTap(settings, key).queue for key in _tapped(settings)]  # if any
            for queue in (settings.queue_name, settings.dlq_name, *extra_queues, *delays, *taps):
                await channel.queue_delete(queue)
            for exchange in (settings.exchange, settings.dlx):
                await channel.exchange_delete(exchange)


def _tapped(settings: Settings) -> list[str]:
    """The routing keys an ``EventTap`` of these settings may have listened to."""
    return [key for key in (settings.status_routing_key, settings.inbound_routing_key) if key]


async def serve_app(app: Any, *, task_status: trio.TaskStatus[int]) -> None:
    """Serve a Quart-Trio ``app`` of a test's own on a free loopback port (``started`` gets
    the port) until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            lambda task_status: serve(app, config, task_status=task_status)
        )
        task_status.started(int(urls[0].rsplit(":", 1)[1]))


def sent_records(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # a line being written is left for the next read
    return [json.loads(line) for line in data.decode().split("\n") if line.strip()]


def require_tool(*names: str, how: str) -> str:
    """The path of the first of ``names`` on PATH. Missing: skipped locally with a one-line
    reason that says how to get it; under CI (``CI=true``, as .ci/run sets, after installing
    the tools) a failure: nothing may be skipped there."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    reason = f"{names[0]} is not installed ({how})"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason}; CI must have it")
    pytest.skip(reason)


def run_once(env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``wa-trio run`` in a process of its own (``env`` over this one's) until it exits: the
    start-up failures that must be one line and an exit code."""
    return subprocess.run(
        [sys.executable, "-m", "wa_trio", "run"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tcp_peers(pid: int, port: int) -> set[int]:
    """The local ports of process ``pid``'s established TCP connections to a server on
    ``port`` (its sockets by inode in /proc/<pid>/fd, matched in /proc/<pid>/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout


def _accepting(port: int) -> bool:
    """Something listens on 127.0.0.1:``port``."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ensure_broker_running(timeout: float = 120) -> None:
    """Start the local RabbitMQ if it is down (as CI must), then wait until it accepts."""

    def accepting() -> bool:
        return _accepting(5672)

    if accepting():
        return
    exe = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    subprocess.run([exe, "-detached"], check=False, timeout=60)
    rabbitmqctl("await_startup", timeout=timeout)
    deadline = time.monotonic() + timeout
    while not accepting():
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start")
        time.sleep(0.5)


class EventTap:
    """A queue bound to ``routing_key`` (default: the status events'); ``at_least(n)`` moves
    its messages into ``events``."""

    def __init__(self, settings: Settings, routing_key: str | None = None) -> None:
        self.settings = settings
        self.routing_key = routing_key or settings.status_routing_key
        self.queue = f"{settings.queue_name}.tap.{self.routing_key}"
        self.events: list[dict[str, Any]] = []

    async def bind(self) -> None:
        async with amqp.connect(BrokerAddress.from_settings(self.settings)) as connection:
            await amqp.declare_topology(connection, self.settings)
            async with connection.open_channel() as channel:
                await channel.queue_declare(self.queue)
                await channel.queue_bind(self.queue, self.settings.exchange, self.routing_key)

    async def at_least(self, n: int) -> bool:
        for message in await drain_queue(self.settings, self.queue):
            self.events.append(json.loads(message.body))
        return len(self.events) >= n


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable"


def ensure_postgres_running(timeout: float = 60) -> None:
    """Start the local PostgreSQL cluster if it is down (as CI must), then wait until it
    accepts connections."""

    def accepting() -> bool:
        return _accepting(5432)

    if accepting():
        return
    for version in sorted(Path("/etc/postgresql").glob("*"), reverse=True):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version.name, "main", "start"],
            check=False,
            timeout=60,
        )
        break
    deadline = time.monotonic() + timeout
    while not accepting():
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not start")
        time.sleep(0.5)


def pg_admin(*statements: str) -> list[Any]:
    """Run statements on the server's ``postgres`` database (autocommit: CREATE/DROP DATABASE);
    the rows of the last one that returns rows."""
    import psycopg

    rows: list[Any] = []
    with psycopg.connect(PG_ADMIN, autocommit=True) as db:
        for statement in statements:
            cursor = db.execute(statement)
            if cursor.description is not None:
                rows = cursor.fetchall()
    return rows


def pg_query(url: str, statement: str, *params: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(statement, params).fetchall()


def terminate_backends(url: str, application_name: str) -> int:
    """pg_terminate_backend for the connections whose application_name starts with the given
    text (how tests cut a lease connection); how many."""
    database = url.rsplit("/", 1)[1].split("?", 1)[0]
    rows = pg_admin(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
        f"'{database}' AND application_name LIKE '{application_name}%'"
    )
    return int(rows[0][0])


async def stop_worker(worker: Worker, timeout: float = 30) -> None:
    """Stop a worker and wait until its consuming connection is down: its queues may then be
    deleted (a consumer whose queue vanishes declares the topology again). A worker that has
    not connected yet is let connect first: its first declaration would come after the
    deletion otherwise."""
    with trio.move_on_after(timeout):
        await wait_for(
            lambda: worker.pipeline.statistics().connections >= 1, timeout=timeout, what="up"
        )
    worker.stop()
    await wait_for(lambda: not worker.pipeline.connected, timeout=timeout, what="stopped")


class SlowDryRun(DryRunTransport):
    """dry-run that takes 2 ms a send, so a stream lasts long enough to be cut in the middle."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        await trio.sleep(0.002)
        return await super().send(message)


def processed(worker: Worker, status: str) -> float:
    """``worker_jobs_processed_total`` of ``status`` (0 before the first)."""
    return job_metric(worker, "worker_jobs_processed_total", status=status) or 0.0
