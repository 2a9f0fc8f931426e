"""Shared fixtures. Rules of this suite (see also tests/integration/conftest.py):

- unit tests touch no socket; integration tests use the real RabbitMQ on 127.0.0.1:5672 with
  queue and exchange names unique to the test, deleted afterwards;
- nothing here reaches beyond this machine: the neonize transport is only ever started with
  WHATSAPP_PROXY pointing at a closed loopback port;
- every wait has a deadline (``wait_for``), never "sleep a bit".
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import delete_topology
from wa_trio.config.settings import Settings
from wa_trio.run import run_worker
from wa_trio.transport import Transport
from wa_trio.worker.app import Worker

# neonize's import runs os.popen("uname -a") without closing it; take that ResourceWarning here,
# once, so the suite's "warnings are errors" rule keeps catching our own leaks.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ResourceWarning)
    import neonize.client  # noqa: F401

    subprocess._cleanup()  # type: ignore[attr-defined]  # reap the popen child
    gc.collect()

BROKER_URL = os.environ.get("WA_TRIO_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _discard(_message: dict[str, object]) -> None:
    """An eliot destination that drops everything."""


@pytest.fixture(scope="session", autouse=True)
def _eliot_never_buffers() -> Iterator[None]:
    """eliot buffers the messages logged while it has no destination and hands them to the
    first one added: one test's job logs would then land in a later test's log file."""
    import eliot

    eliot.add_destinations(_discard)
    yield
    eliot.remove_destination(_discard)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@pytest.fixture(autouse=True)
def _http_stays_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches Meta (or anyone): every request the worker's HTTP client makes must go
    to loopback; any other host (the Graph API's default URL, a webhook URL left at a real
    address) fails the test before a byte leaves."""
    import httpx

    original = httpx.AsyncClient.send

    async def loopback_only(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        if request.url.host not in LOOPBACK:
            pytest.fail(f"a test tried to reach {request.url.host}: only loopback is allowed")
        return await original(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", loopback_only)


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Environment for one worker with unique names; keyword arguments override."""
    suffix = uuid.uuid4().hex[:10]

    def make(**overrides: str) -> dict[str, str]:
        env = {
            "RABBITMQ_URL": BROKER_URL,
            "WHATSAPP_QUEUE_NAME": f"test.{suffix}.q",
            "WHATSAPP_EXCHANGE": f"test.{suffix}.x",
            "WHATSAPP_ROUTING_KEY": "whatsapp.send",
            "WHATSAPP_TRANSPORT": "dry-run",
            "WHATSAPP_DRY_RUN_FILE": str(tmp_path / "sent.jsonl"),
            "WHATSAPP_SESSION_PATH": str(tmp_path / "session"),
            "WHATSAPP_PROXY": f"http://127.0.0.1:{closed_port()}",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            "ENV": "production",
            # pacing off unless a test is about pacing: these tests measure the pipeline
            "WHATSAPP_RATE_LIMIT": "off",
            "WHATSAPP_RECIPIENT_INTERVAL": "0",
            "WHATSAPP_SEND_JITTER": "0",
        }
        env.update(overrides)
        return env

    return make


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (started when down), dropped after
    the test (its connections ended first): the WHATSAPP_STORE URL."""
    from tests.helpers import ensure_postgres_running, pg_admin

    ensure_postgres_running()
    name = f"test_{uuid.uuid4().hex[:12]}"
    pg_admin(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}?sslmode=disable"
    finally:
        pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def settings(make_env: Callable[..., dict[str, str]]) -> Iterator[Settings]:
    yield Settings.from_env(make_env())


@pytest.fixture
async def failing_topology(make_env: Callable[..., dict[str, str]]) -> AsyncIterator[Settings]:
    """Every dry-run send fails (transient); one retry delay of 60 s: a job parks in
    ``<queue>.retry.60s`` and stays there for the test to look at. Deleted afterwards."""
    settings = Settings.from_env(
        make_env(WHATSAPP_DRY_RUN_FAIL_RATE="1", WHATSAPP_RETRY_DELAYS="60s")
    )
    yield settings
    await delete_topology(settings)  # the retry and wait queues too


@pytest.fixture(autouse=True)
def _fresh_store_connects() -> Iterator[None]:
    """The process-wide budget of neonize connects on a PostgreSQL store
    (``transport/neonize/store_connects.py``) is a production process's: each test starts with
    a fresh one, as a process would."""
    from wa_trio.transport.neonize.store_connects import STORE_CONNECTS

    STORE_CONNECTS.limit, STORE_CONNECTS.made = None, 0
    yield
    STORE_CONNECTS.limit, STORE_CONNECTS.made = None, 0


@pytest.fixture(autouse=True)
def _no_concurrent_map_access() -> Iterator[None]:
    """The neonize double records what would be Go's "fatal error: concurrent map writes"
    (tests/fakes.py ``GoMapsModel``): no test may produce one."""
    from tests.fakes import GO_MAPS_MODEL

    GO_MAPS_MODEL.violations.clear()
    yield
    found, GO_MAPS_MODEL.violations[:] = list(GO_MAPS_MODEL.violations), []
    assert not found, f"neonize's client maps were touched during a write: {found}"


#: the ``delete_after`` fixture's type: ``delete_after(settings, extra_queues=())`` -> settings
DeleteAfter = Callable[..., Settings]


@pytest.fixture
async def delete_after() -> AsyncIterator[Callable[..., Settings]]:
    """``delete_after(settings, extra_queues=())`` -> settings, whose queues and exchanges are
    deleted after the test (instead of a hand-written ``finally: delete_topology``). Ask for it
    before the fixtures that start workers: it is torn down after them."""
    made: list[tuple[Settings, tuple[str, ...]]] = []

    def register(settings: Settings, extra_queues: tuple[str, ...] = ()) -> Settings:
        made.append((settings, tuple(extra_queues)))
        return settings

    yield register
    for settings, extra in made:
        await delete_topology(settings, extra)


@pytest.fixture
async def topology(settings: Settings) -> AsyncIterator[Settings]:
    """``settings`` whose queues and exchanges are deleted after the test."""
    yield settings
    await delete_topology(settings)


StartWorker = Callable[..., Any]


@pytest.fixture
def start_worker(nursery: trio.Nursery) -> StartWorker:
    """``await start_worker(settings, transport=None)`` -> Worker running in the test nursery."""

    async def start(settings: Settings, transport: Transport | None = None) -> Worker:
        worker: Worker = await nursery.start(
            lambda task_status: run_worker(
                settings, transport=transport, handle_signals=False, task_status=task_status
            )
        )
        return worker

    return start


@pytest.fixture
def cli_settings(
    make_env: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings of a unique topology, also exported to the environment for in-process CLI runs."""
    env = make_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env(env)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tiers, applied for real (a ``pytestmark`` in a conftest applies to nothing):
    tests/integration -> ``integration``, tests/fault -> ``fault`` (+ ``integration``)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "fault" in parts:
            item.add_marker(pytest.mark.integration)
        if "fault" in parts:
            item.add_marker(pytest.mark.fault)
