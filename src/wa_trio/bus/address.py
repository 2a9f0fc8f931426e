"""Where the broker is: RABBITMQ_URL's login, virtual host and node (or the nodes of a
cluster, ``grammar.broker_nodes``), and which node to try first (``NODES``: the one that
answered last; after a connection to it was lost, the next one). No I/O: ``amqp.connect``
opens the connection."""

from __future__ import annotations

import attrs

from wa_trio.config.grammar import broker_nodes
from wa_trio.config.settings import Settings

NODE_TIMEOUT = 10.0  # seconds one node of several may take to open a connection

Node = tuple[str, int]


@attrs.frozen
class BrokerAddress:
    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)
    vhost: str
    tls: bool = False
    #: every node of a cluster RABBITMQ_URL lists (empty: ``host``:``port`` alone)
    nodes: tuple[Node, ...] = ()

    @property
    def redacted(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.user}:***@{self.host}:{self.port}/{self.vhost}"

    @property
    def all_nodes(self) -> tuple[Node, ...]:
        return self.nodes or ((self.host, self.port),)

    def at(self, node: Node) -> BrokerAddress:
        return attrs.evolve(self, host=node[0], port=node[1])

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAddress:
        return cls(
            host=settings.rabbitmq_host,
            port=settings.rabbitmq_port,
            user=settings.rabbitmq_user,
            password=settings.rabbitmq_password,
            vhost=settings.rabbitmq_vhost,
            tls=settings.rabbitmq_url.startswith("amqps://"),
            nodes=broker_nodes(settings.rabbitmq_url),
        )


class NodeOrder:
    """Which node of a cluster to try first, per node list (trio thread only)."""

    def __init__(self) -> None:
        self._first: dict[tuple[Node, ...], int] = {}

    def order(self, address: BrokerAddress) -> list[Node]:
        nodes = address.all_nodes
        first = self._first.get(nodes, 0) % len(nodes)
        return [nodes[(first + n) % len(nodes)] for n in range(len(nodes))]

    def answered(self, address: BrokerAddress, where: BrokerAddress) -> None:
        nodes = address.all_nodes
        self._first[nodes] = nodes.index((where.host, where.port))

    def lost(self, address: BrokerAddress) -> None:
        nodes = address.all_nodes
        if len(nodes) > 1:
            self._first[nodes] = (self._first.get(nodes, 0) + 1) % len(nodes)


NODES = NodeOrder()


#: the broker's refusals that are configuration (AMQP reply codes): our login, the vhost
REFUSALS = {
    403: "refused the login of user {user!r} (ACCESS_REFUSED): check RABBITMQ_USER and "
    "RABBITMQ_PASSWORD (or RABBITMQ_URL)",
    530: "refused virtual host {vhost!r} (NOT_ALLOWED: it does not exist, or the user may not "
    "use it): check RABBITMQ_VHOST (or RABBITMQ_URL)",
}


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in leaves(sub)]
    return [error]


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


__all__ = [
    "NODES",
    "NODE_TIMEOUT",
    "REFUSALS",
    "BrokerAddress",
    "Node",
    "NodeOrder",
    "describe",
    "leaves",
]
