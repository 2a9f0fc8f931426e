"""Broker probe and queue sampler, on a connection of their own.

A passive declare of a missing queue makes RabbitMQ close the channel, and serena then closes
the whole connection; keeping these calls off the consuming connection means a deleted queue or a
slow probe can never disturb the pipeline.

- ``run()``: keep a connection open (reconnect with backoff), sample ``queue_depth`` and
  ``queue_dlq_size`` every WHATSAPP_QUEUE_SAMPLE_INTERVAL.
- ``check()``: the /healthz broker check: a passive declare of the job queue with a 2 s timeout,
  its result cached 5 s; concurrent callers share one probe, so a probe storm reaches the broker
  at most once per cache period.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import trio

from wa_trio.bus import amqp
from wa_trio.bus.amqp import BrokerAddress
from wa_trio.bus.reconnect import keep_connected
from wa_trio.config.settings import Settings
from wa_trio.core.retry import Backoff
from wa_trio.metrics import Metrics

CHECK_TIMEOUT = 2.0
CHECK_CACHE = 5.0


@attrs.frozen
class CheckResult:
    ok: bool
    detail: str
    checked_at: float


@attrs.frozen
class MonitorStatistics:
    up: bool  # its own connection to the broker is open
    probes: int  # broker round trips made by check()


class BrokerMonitor:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        check_timeout: float = CHECK_TIMEOUT,
        cache_for: float = CHECK_CACHE,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.address = BrokerAddress.from_settings(settings)
        self.check_timeout = check_timeout
        self.cache_for = cache_for
        self.probes = 0  # broker round trips made by check(); tests read it
        self._channel: Any = None
        self._lock = trio.Lock()  # one operation at a time on the channel
        self._check_lock = trio.Lock()
        self._cached: CheckResult | None = None
        self._backoff = Backoff(initial=0.5, cap=15.0)
        self._wake = trio.Event()
        #: the last sampled depth of the job queue (None: unknown), and since when (Unix time)
        #: it has held jobs without once being seen empty (``core.backlog``)
        self.depth: int | None = None
        self.backlog_since: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # app.py starts it once the pipeline declared the topology

        async def serve(connection: amqp.Connection) -> None:
            async with connection.open_channel() as channel:
                self._channel = channel
                self._backoff.reset()
                try:
                    while True:
                        await self.sample()
                        with trio.move_on_after(self.settings.sample_interval):
                            await self._wake.wait()
                        self._wake = trio.Event()
                finally:
                    self._channel = None

        def down() -> None:
            self._channel = None
            self._unknown()

        await keep_connected(
            self.address, serve, what="wa_trio:monitor", backoff=self._backoff, on_down=down
        )

    def statistics(self) -> MonitorStatistics:
        return MonitorStatistics(up=self._channel is not None, probes=self.probes)

    def _unknown(self) -> None:
        """The broker cannot be asked: the queue gauges read NaN (unknown), never a stale
        count or a reassuring 0 (docs/health-and-metrics.md)."""
        self.metrics.queue_depth.labels(self.settings.queue_name).set(math.nan)
        self.metrics.dlq_size.labels(self.settings.dlq_name).set(math.nan)
        self.depth = None

    def sample_now(self) -> None:
        """Ask for a sample at once (tests, and after a burst of dead-letters)."""
        self._wake.set()

    async def sample(self) -> None:
        """Update queue_depth / queue_dlq_size. A failure here ends the connection (reconnect)."""
        channel = self._channel
        if channel is None:
            return
        async with self._lock:
            depth = await amqp.queue_message_count(channel, self.settings.queue_name)
            dlq = await amqp.queue_message_count(channel, self.settings.dlq_name)
        self.metrics.queue_depth.labels(self.settings.queue_name).set(depth)
        self.metrics.dlq_size.labels(self.settings.dlq_name).set(dlq)
        self.depth = depth
        if depth == 0:
            self.backlog_since = None
        elif self.backlog_since is None:
            self.backlog_since = time.time()

    async def check(self) -> CheckResult:
        """The broker health check (cached; see module docstring)."""
        async with self._check_lock:
            now = trio.current_time()
            cached = self._cached
            if cached is not None and now - cached.checked_at < self.cache_for:
                return cached
            result = await self._probe()
            if self._channel is None and not result.ok:
                # no broker round trip was made: nothing to protect, and a cached failure would
                # keep a just-started worker unhealthy for 5 s
                return result
            self._cached = CheckResult(result.ok, result.detail, trio.current_time())
            return self._cached

    async def _probe(self) -> CheckResult:
        channel = self._channel
        now = trio.current_time()
        if channel is None:
            return CheckResult(False, "no broker connection", now)
        self.probes += 1
        with trio.move_on_after(self.check_timeout) as scope:
            try:
                async with self._lock:
                    await amqp.queue_message_count(channel, self.settings.queue_name)
            except Exception as error:  # noqa: BLE001 - any failure means unhealthy
                return CheckResult(False, f"probe failed: {type(error).__name__}", now)
        if scope.cancelled_caught:
            return CheckResult(False, f"probe timed out after {self.check_timeout:g}s", now)
        return CheckResult(True, "ok", now)
