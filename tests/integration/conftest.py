"""Integration tests: the real RabbitMQ on 127.0.0.1:5672 (marked ``integration`` by
tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.helpers import ensure_broker_running


@pytest.fixture(scope="session", autouse=True)
def _broker() -> None:
    """The contributor's RabbitMQ on 5672 (started when down, as CI must); the tests use only
    queues and exchanges of their own there, deleted afterwards."""
    ensure_broker_running()
