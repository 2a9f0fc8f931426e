from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from tests.helpers import delete_topology, ensure_broker_running
from wa_trio.app import Worker, run_worker
from wa_trio.config import Settings
from wa_trio.transport import Transport

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def _broker() -> None:
    ensure_broker_running()


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
