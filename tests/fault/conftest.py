"""Fault tests: they stop, cut and kill. A broker they stop or cut is a RabbitMQ node of their
own, started here once per test session on free ports (its own RABBITMQ_NODENAME, data dir and
RABBITMQ_CONF_ENV_FILE) and stopped at the end; the contributor's broker on 5672 serves other
applications and is never touched beyond the suite's own queues (SPEC.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import attrs
import pytest

from tests.helpers import delete_topology
from wa_trio.config.settings import Settings


def _free_port_pair() -> int:
    """A port P with P and P + 20000 (the Erlang distribution port) both free."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 20000 < 65536:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + 20000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


@attrs.frozen
class OwnBroker:
    node: str
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = 90) -> str:
        exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        return subprocess.run(
            [exe, "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            env={**os.environ, **self.env},
        ).stdout


@contextlib.contextmanager
def start_node() -> Iterator[OwnBroker]:
    """A RabbitMQ node of the suite's own on free ports, stopped and removed afterwards."""
    port = _free_port_pair()
    node = f"wa-trio-test-{uuid.uuid4().hex[:8]}@localhost"
    base = Path(tempfile.mkdtemp(prefix="wa-trio-rabbit-"))
    (base / "enabled_plugins").write_text("[].\n")  # no management plugin: no port 15672
    (base / "rabbitmq-env.conf").write_text("")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    env = {
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
    }
    if os.geteuid() == 0:  # Debian's wrappers run the node as the rabbitmq user
        shutil.chown(base, "rabbitmq", "rabbitmq")
        for path in base.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
        base.chmod(0o755)
    exe = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    subprocess.run([exe, "-detached"], env={**os.environ, **env}, check=True, timeout=60)
    broker = OwnBroker(node, port, env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                broker.ctl("await_startup", "--timeout", "60")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # not registered with epmd yet
        yield broker
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            broker.ctl("stop", timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def own_broker() -> Iterator[OwnBroker]:
    with start_node() as broker:
        yield broker


@pytest.fixture
def own_env(
    make_env: Callable[..., dict[str, str]], own_broker: OwnBroker
) -> Callable[..., dict[str, str]]:
    """``make_env`` pointed at the suite's own broker node."""

    def make(**overrides: str) -> dict[str, str]:
        return make_env(RABBITMQ_URL=own_broker.url, **overrides)

    return make


@pytest.fixture
async def own_topology(own_env: Callable[..., dict[str, str]]) -> AsyncIterator[Settings]:
    settings = Settings.from_env(own_env())
    yield settings
    await delete_topology(settings)
