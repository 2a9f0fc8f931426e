"""The only module that imports the AMQP client (serena): connect, topology, consume, publish.

Why serena and how it is used: docs/decisions.md. Things the rest of wa-trio relies on:

- ``connect()`` is an async context manager; any connection-level failure (broker gone, socket
  closed, heartbeat timeout, channel error that serena escalates) leaves it as ``BrokerError``,
  never as a bare ExceptionGroup, so callers can reconnect with one ``except``.
- serena fixes a channel's prefetch to ``channel_buffer_size // 3`` when it opens the channel. We
  keep serena's buffer large (so a multi-frame message can never wedge the connection's reader)
  and send our own ``basic.qos`` with WHATSAPP_PREFETCH_COUNT right after opening the consume
  channel; ``rabbitmqctl list_channels prefetch_count`` shows it (tested).
- Publishes use confirms (serena's default) and ``mandatory``: an unroutable message raises.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anyio
import attrs
import eliot
import trio
from serena import AMQPConnection, AMQPError, BasicHeader, Channel, open_connection
from serena.enums import ClassID
from serena.exc import MessageReturnedError, UnexpectedCloseError
from serena.payloads.header import serialise_basic_header
from serena.payloads.method import BasicQOSOkPayload, BasicQOSPayload

from wa_trio.bus import _serena_patch as serena_patch
from wa_trio.bus import topology
from wa_trio.bus.address import NODE_TIMEOUT, NODES, REFUSALS, BrokerAddress, describe, leaves
from wa_trio.bus.topology import retry_queue_name, wait_queue_name
from wa_trio.config.settings import Settings
from wa_trio.core import headers
from wa_trio.core.errors import BrokerRefusedError, TopologyError, WaTrioError

__all__ = [
    "BrokerAddress",
    "BrokerError",
    "Channel",
    "Delivery",
    "EncodeError",
    "Properties",
    "connect",
    "consume",
    "consume_channel",
    "declare_topology",
    "get",
    "listen",
    "publish",
    "queue_message_count",
    "retry_queue_name",
    "translate",
    "wait_queue_name",
]

serena_patch.apply()

_BUFFER_FRAMES = 3 * 256  # serena's per-channel frame buffer; see module docstring


class BrokerError(WaTrioError):
    """The broker connection failed or was closed; reconnecting may help."""

    code = "broker_unavailable"


class EncodeError(WaTrioError):
    """A message could not be encoded for the wire (checked before anything is sent)."""

    code = "unencodable"


Connection = AMQPConnection  # opened by ``connect``, or borrowed (``bus.shared``)


@contextlib.asynccontextmanager
async def connect(
    address: BrokerAddress, *, heartbeat: int = 30, name: str = "wa-trio"
) -> AsyncIterator[Connection]:
    """Open a connection; failures come out as ``BrokerError`` (or TopologyError). A cluster's
    nodes are tried in ``NODES``' order, the next when one is unreachable (``NODE_TIMEOUT``);
    a refused login is not tried elsewhere (the same users on every node)."""
    where: BrokerAddress | None = None  # translated outside serena's nursery (it wraps errors)
    try:
        async with contextlib.AsyncExitStack() as stack:
            connection, where = await _open_first(stack, address, NODES.order(address), heartbeat)
            NODES.answered(address, where)
            yield connection
    except BaseException as error:
        if where is not None:  # a failure to open was said by _open_first
            if _is_broker_failure(error):
                NODES.lost(address)  # the next connect starts at the following node
            translate(error, where)
        raise


async def _open_first(
    stack: contextlib.AsyncExitStack,
    address: BrokerAddress,
    order: list[tuple[str, int]],
    heartbeat: int,
) -> tuple[Connection, BrokerAddress]:
    """The first node of ``order`` that opens a connection (entered on ``stack``)."""
    ssl_context = ssl.create_default_context() if address.tls else None
    for index, node in enumerate(order):
        where = address.at(node)
        opening = open_connection(
            where.host,
            port=where.port,
            username=where.user,
            password=where.password,
            virtual_host=where.vhost,
            ssl_context=ssl_context,
            heartbeat_interval=heartbeat,
            channel_buffer_size=_BUFFER_FRAMES,
        )
        last = index == len(order) - 1
        try:
            if len(order) > 1:
                await _reachable(where)
            return await stack.enter_async_context(opening), where
        except BaseException as error:
            _refused(error, where)
            if last or not _is_broker_failure(error):
                translate(error, where)
                raise
            eliot.log_message(
                message_type="wa_trio:broker:node_unreachable", node=f"{where.host}:{where.port}"
            )
    raise AssertionError("unreachable: the last node raises")


async def _reachable(where: BrokerAddress) -> None:
    """A node of several answers TCP within ``NODE_TIMEOUT`` (else OSError or TimeoutError)."""
    try:
        with trio.fail_after(NODE_TIMEOUT):
            stream = await trio.open_tcp_stream(where.host, where.port)
    except trio.TooSlowError:
        raise TimeoutError(f"no answer within {NODE_TIMEOUT:g}s") from None
    await stream.aclose()


def _is_broker_failure(error: BaseException) -> bool:
    found = leaves(error)
    return bool(found) and all(isinstance(leaf, _BROKER_FAILURES) for leaf in found)


def translate(error: BaseException, address: BrokerAddress) -> None:
    """Raise what ``error`` means for us (one line, naming the broker), if anything."""
    _refused(error, address)
    try:
        _translate(error)
    except BrokerError as failure:  # say which broker (redacted)
        raise BrokerError(f"{address.redacted}: {failure}") from None


def _refused(error: BaseException, address: BrokerAddress) -> None:
    """Raise ``BrokerRefusedError`` (one line) when the broker refused our login or vhost."""
    for leaf in leaves(error):
        if not isinstance(leaf, UnexpectedCloseError) or leaf.reply_code not in REFUSALS:
            continue
        if "is down" in str(leaf.reply_message):  # a vhost still starting: an outage, retried
            continue
        what = REFUSALS[leaf.reply_code].format(user=address.user, vhost=address.vhost)
        raise BrokerRefusedError(f"the broker at {address.host}:{address.port} {what}") from None


_BROKER_FAILURES = (
    AMQPError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    TimeoutError,
    EOFError,
    BrokerError,
)


def _translate(error: BaseException) -> None:
    """Raise our error for a group made only of broker failures; return to re-raise otherwise."""
    found = leaves(error)
    if any(isinstance(leaf, KeyboardInterrupt | SystemExit) for leaf in found):
        return
    if any(isinstance(leaf, trio.Cancelled) for leaf in found):
        # a broker failure that races a cancellation (a shutdown while the broker goes away):
        # the cancellation wins, the failure is moot and must not escape as a crash
        if isinstance(error, BaseExceptionGroup) and all(
            isinstance(leaf, (trio.Cancelled, *_BROKER_FAILURES)) for leaf in found
        ):
            cancelled, _ = error.split(trio.Cancelled)
            if cancelled is not None:
                raise cancelled from None
        return
    topology = [leaf for leaf in found if isinstance(leaf, TopologyError)]
    if topology:
        raise topology[0] from None
    if found and all(isinstance(leaf, _BROKER_FAILURES) for leaf in found):
        raise BrokerError("; ".join(describe(leaf) for leaf in found)) from error


async def set_prefetch(channel: Channel, count: int) -> None:
    """Send basic.qos(prefetch_count=count) on ``channel`` (overrides serena's default)."""
    qos = BasicQOSPayload(prefetch_size=0, prefetch_count=count, global_=False)
    await channel._send_and_receive_frame(qos, BasicQOSOkPayload)


# ------------------------------------------------------------------------------------ topology


async def declare_topology(connection: Connection, settings: Settings) -> None:
    """Declare what ``topology.declarations`` lists, then bind (idempotent).

    Raises:
        TopologyError: an existing object has other arguments; the message says which and how to
            fix it (one line).
    """
    async with connection.open_channel() as channel:
        await _declare(channel, topology.declarations(settings))
        for queue, exchange, routing_key in topology.bindings(settings):
            await channel.queue_bind(queue, exchange, routing_key)
        await _declare(channel, topology.delay_queues(settings))


async def _declare(channel: Channel, declarations: list[topology.Declaration]) -> None:
    for each in declarations:
        try:
            if each.kind == "exchange":
                await channel.exchange_declare(each.name, each.exchange_type, durable=True)
            else:
                await channel.queue_declare(each.name, durable=True, arguments=each.arguments)
        except UnexpectedCloseError as error:
            if error.reply_code == 406:
                raise topology.mismatch(error.reply_message, each) from None
            raise


async def queue_message_count(channel: Channel, queue: str) -> int:
    """Messages ready in ``queue`` (passive declare; a missing queue closes the channel)."""
    result = await channel.queue_declare(queue, passive=True)
    return int(result.message_count)


# ---------------------------------------------------------------------------------- messages


@attrs.frozen
class Properties:
    """The AMQP basic properties we read and write (a subset of serena's BasicHeader)."""

    headers: Mapping[str, Any] = attrs.field(factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None
    timestamp: int | None = None
    type_name: str | None = None
    app_id: str | None = None
    expiration: str | None = None

    def to_header(self) -> BasicHeader:
        return BasicHeader(
            headers=headers.encodable(self.headers)[0],
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            content_type=self.content_type,
            timestamp=self.timestamp,
            type_name=self.type_name,
            application_id=self.app_id,
            expiration=self.expiration,
            delivery_mode=2,
        )

    @classmethod
    def of(cls, header: BasicHeader) -> Properties:
        return cls(
            headers={key: _text(value) for key, value in (header.headers or {}).items()},
            message_id=header.message_id,
            correlation_id=header.correlation_id,
            content_type=header.content_type,
            timestamp=header.timestamp,
            type_name=header.type_name,
            app_id=header.application_id,
        )


def _text(value: Any) -> Any:  # AMQP long strings arrive as bytes: str when UTF-8
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


@attrs.frozen
class Delivery:
    """One delivered message. Ack/nack go to the channel it came from."""

    body: bytes
    properties: Properties
    delivery_tag: int
    redelivered: bool
    routing_key: str
    _channel: Channel = attrs.field(alias="channel", repr=False)

    async def ack(self, *, multiple: bool = False) -> None:
        """Ack this delivery (``multiple``: and every earlier unacked one on its channel)."""
        await self._channel.basic_ack(self.delivery_tag, multiple=multiple)


async def get(channel: Channel, queue: str, *, auto_ack: bool = False) -> Delivery | None:
    """basic.get one message of ``queue`` (None: the queue is empty).

    Without ``auto_ack`` it goes back to the queue when the channel closes, unless ``ack``-ed.
    """
    message = await channel.basic_get(queue, no_ack=auto_ack)
    return None if message is None else _delivery(message, channel)


async def listen(channel: Channel, exchange: str, routing_key: str) -> str:
    """A server-named, exclusive, auto-deleted queue bound to ``exchange`` with
    ``routing_key`` (to watch events published there); its name."""
    queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).name
    await channel.queue_bind(queue, exchange, routing_key)
    return str(queue)


def _delivery(message: Any, channel: Channel) -> Delivery:
    return Delivery(
        body=message.body,
        properties=Properties.of(message.header),
        delivery_tag=message.envelope.delivery_tag,
        redelivered=message.envelope.redelivered,
        routing_key=message.envelope.routing_key,
        channel=channel,
    )


@contextlib.asynccontextmanager
async def consume_channel(connection: Connection, *, prefetch: int) -> AsyncIterator[Channel]:
    """A channel for consuming, with basic.qos = ``prefetch``.

    Kept apart from ``consume`` on purpose: closing a channel requeues its unacked messages, so
    the channel must outlive the consumer until the sender has acked the job in hand.
    """
    async with connection.open_channel() as channel:
        await set_prefetch(channel, prefetch)
        yield channel


@contextlib.asynccontextmanager
async def consume(channel: Channel, queue: str) -> AsyncIterator[AsyncIterator[Delivery]]:
    """Consume ``queue`` with manual acks; leaving the block cancels the consumer only."""
    async with channel.basic_consume(queue, auto_ack=False) as messages:

        async def deliveries() -> AsyncGenerator[Delivery]:
            async for message in messages:
                yield _delivery(message, channel)

        async with contextlib.aclosing(deliveries()) as iterator:  # closed, not left to the GC
            yield iterator


async def publish(
    channel: Channel,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Properties,
    *,
    mandatory: bool = True,
    check: bool = False,
) -> None:
    """Publish with confirms. Raises BrokerError if the broker returns or nacks the message.

    ``mandatory``: an unroutable message is returned (an error) instead of dropped; jobs use it,
    status events do not (nobody listening is normal for them).

    ``check``: encode the properties first and raise ``EncodeError`` before anything is sent
    (serena encodes the header frame after it sent the method frame, so a failure there would
    leave half a message on the channel). Copies of a publisher's message use it.
    """
    header = properties.to_header()
    if check:
        try:
            serialise_basic_header(ClassID.BASIC, len(body), header)
        except Exception as error:  # noqa: BLE001 - struct.error, ValueError, OverflowError...
            raise EncodeError(f"properties not encodable: {describe(error)[:200]}") from None
    try:
        await channel.basic_publish(exchange, routing_key, body, header=header, mandatory=mandatory)
    except MessageReturnedError as error:
        raise BrokerError(f"message returned by the broker (unroutable): {error}") from None
    except AMQPError as error:
        raise BrokerError(describe(error)) from None
