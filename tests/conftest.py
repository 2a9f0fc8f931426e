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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wa_trio.config import Settings

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
def settings(make_env: Callable[..., dict[str, str]]) -> Iterator[Settings]:
    yield Settings.from_env(make_env())
