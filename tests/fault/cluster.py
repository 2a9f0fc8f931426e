"""A three-node RabbitMQ cluster of the suite's own (issue 34): three nodes on free ports, each
with its own RABBITMQ_NODENAME, data dir and RABBITMQ_CONF_ENV_FILE (``conftest.start_node``),
the second and third joined to the first. Never the contributor's broker on 5672. And a TCP
relay in front of one node that a test can cut (the node stays up; the worker cannot reach it:
what a network partition looks like from the worker)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import attrs
import trio

from tests.fault.conftest import OwnBroker, start_node


@attrs.frozen
class Cluster:
    nodes: tuple[OwnBroker, ...]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/"

    def node(self, name: str) -> OwnBroker:
        return next(node for node in self.nodes if node.node == name)

    def leader(self, queue: str) -> str:
        """The node leading quorum queue ``queue`` (``rabbitmqctl list_queues name leader``)."""
        for node in self.nodes:
            with contextlib.suppress(subprocess.CalledProcessError):
                out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
                for line in out.splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == queue:
                        return parts[1]
        raise LookupError(f"no leader for {queue}")


@contextlib.contextmanager
def three_nodes() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        nodes = tuple(stack.enter_context(start_node()) for _ in range(3))
        first = nodes[0].node
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first)
            node.ctl("start_app")
        deadline = time.monotonic() + 60
        while first not in nodes[2].ctl("cluster_status") or len(_running(nodes[0])) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.5)
        yield Cluster(nodes)


def _running(node: OwnBroker) -> list[str]:
    out = node.ctl("eval", "rabbit_nodes:all_running().")
    return [part for part in out.replace("[", " ").replace("]", " ").split(",") if "@" in part]


class Relay:
    """Forwards 127.0.0.1:``port`` to a node's AMQP port until ``cut()``: then every open
    connection stops carrying bytes (held open, silent) and new ones are refused."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._cut = trio.Event()
        self._listeners: list[trio.SocketListener] = []

    def cut(self) -> None:
        self._cut.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = self._listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await trio.serve_listeners(
                        self._serve, self._listeners, handler_nursery=nursery
                    )

            nursery.start_soon(accept)
            task_status.started()
            await self._cut.wait()
            accepting.cancel()  # refused from now on (the listeners closed once it stopped)
            await trio.sleep(0.1)
            for listener in self._listeners:
                await listener.aclose()
            await trio.sleep_forever()  # the open connections stay, silent

    async def _serve(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await client.aclose()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, upstream)
            nursery.start_soon(self._pipe, upstream, client)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while not self._cut.is_set():
                data = await source.receive_some(65536)
                if not data:
                    break
                if self._cut.is_set():
                    break
                await sink.send_all(data)
        await self._cut.wait()  # a cut leaves the connection open and silent
