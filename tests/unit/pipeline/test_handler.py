"""The job handler without RabbitMQ (issue 29): the real ``JobHandler``, ``Copies``, ``Sender``
and SQLite ledger, with the broker side in memory (``tests/memory_bus.py``). Every step of the
plan is driven here, a crash between steps included; the integration tests still assert the
same behaviours against RabbitMQ."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import trio

from tests.helpers import UID
from tests.memory_bus import MemoryChannel, RecordingStatus, memory_job
from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError
from wa_trio.core.job import Job
from wa_trio.core.outcome import CRASH_LIMIT
from wa_trio.core.pacing import Pacer
from wa_trio.events.status import StatusPublisher
from wa_trio.log import Redactor
from wa_trio.metrics import WORKER, Metrics
from wa_trio.pipeline.handler import JobHandler
from wa_trio.pipeline.ledger_gate import LedgerGate
from wa_trio.pipeline.sender import Sender
from wa_trio.pipeline.settle import Copies
from wa_trio.stores.ledger import AsyncLedger
from wa_trio.transport import OutgoingMessage, SendResult
from wa_trio.transport.dry_run import DryRunTransport


class Crash(BaseException):
    """The process dying between two steps (nothing in the handler catches it)."""


class Scripted(DryRunTransport):
    """Dry-run, with what each send does scripted: ``None`` sends, an exception is raised."""

    def __init__(self, *script: BaseException | None) -> None:
        super().__init__(None, Redactor(True))
        self.script = list(script)
        self.sends: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        await trio.lowlevel.checkpoint()
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.sends.append(message)
        return SendResult(f"WA{len(self.sends)}", time.time())


@attrs.define
class Rig:
    handler: JobHandler
    channel: MemoryChannel
    status: RecordingStatus
    ledger: AsyncLedger
    metrics: Metrics
    transport: Scripted
    stopping: trio.Event

    async def take(self, *jobs: Job) -> None:
        await self.handler.handle_batch(list(jobs), self.channel)  # type: ignore[arg-type]

    def failed(self, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "worker_jobs_failed_total", {"worker": WORKER, "error_type": code}
        )
        return value or 0.0

    def dead_letters(self) -> list[str]:
        return [str(p.headers.get("x-error-code")) for p in self.channel.published if p.exchange]


Build = Callable[..., Rig]


@pytest.fixture
def build(tmp_path: Path, make_env: Callable[..., dict[str, str]]) -> Build:
    ledgers: dict[str, AsyncLedger] = {}

    def make(transport: Scripted | None = None, **env: str) -> Rig:
        settings = Settings.from_env(make_env(**env))
        metrics = Metrics("q", "q.dlq")
        stopping = trio.Event()
        # one ledger file per test: a rebuilt rig is the same worker after a restart
        ledger = ledgers.setdefault("ledger", AsyncLedger(_sqlite(tmp_path / "ledger.db")))
        channel = MemoryChannel()
        status = RecordingStatus(channel)
        copies = Copies(settings, metrics, cast(StatusPublisher, status))
        pacer = Pacer(rate=None)
        transport = transport or Scripted()
        sender = Sender(transport, pacer, metrics, Redactor(True), stopping)
        handler = JobHandler(
            settings,
            metrics,
            ledger,
            LedgerGate(ledger, stopping),
            copies,
            sender,
            pacer,
            trio.current_time,
            stopping,
            None,
        )
        return Rig(handler, channel, status, ledger, metrics, transport, stopping)

    return make


def _sqlite(path: Path) -> Any:
    from wa_trio.stores.sqlite.ledger import Ledger

    return Ledger(path)


def body(**fields: Any) -> dict[str, Any]:
    return {"user_id": UID, "text_message": "hi", "destination": "+5511999999999", **fields}


async def state_of(rig: Rig, key: str) -> str | None:
    entry = await rig.ledger.get(key)
    return None if entry is None else entry.state


# ------------------------------------------------------------------------------- the steps


async def test_a_job_is_sent_recorded_then_its_event_then_its_ack(build: Build) -> None:
    rig = build()
    job = memory_job(rig.channel, body(), message_id="m-1")
    await rig.take(job)
    assert len(rig.transport.sends) == 1
    assert await state_of(rig, "m-1") == "sent"
    assert rig.channel.log == ["event sent", "ack 1"]


async def test_an_invalid_job_is_dead_lettered_with_its_code_then_acked(build: Build) -> None:
    rig = build()
    await rig.take(memory_job(rig.channel, body(destination="not a phone")))
    assert rig.dead_letters() == ["invalid_destination"]
    assert rig.channel.log == [f"publish {rig.handler.settings.dlx}", "event failed", "ack 1"]
    assert rig.failed("invalid_destination") == 1
    assert rig.transport.sends == []


async def test_a_sent_job_delivered_again_is_acked_as_a_duplicate(build: Build) -> None:
    rig = build()
    await rig.take(memory_job(rig.channel, body(), message_id="m-2"))
    again = build()
    await again.take(memory_job(again.channel, body(), message_id="m-2", redelivered=True))
    assert again.transport.sends == []
    assert again.channel.log == ["ack 1"]


async def test_a_reused_message_id_is_a_conflict(build: Build) -> None:
    rig = build()
    await rig.take(memory_job(rig.channel, body(), message_id="m-3"))
    again = build()
    await again.take(memory_job(again.channel, body(text_message="other"), message_id="m-3"))
    assert again.dead_letters() == ["message_id_conflict"]


async def test_a_job_not_due_is_parked_in_a_wait_queue(build: Build) -> None:
    rig = build()
    send_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    await rig.take(memory_job(rig.channel, body(send_at=send_at)))
    [parked] = rig.channel.published
    assert parked.exchange == "" and ".wait." in parked.routing_key
    assert rig.channel.log[-1] == "ack 1" and rig.transport.sends == []


async def test_the_last_sub_second_is_waited_in_the_worker(build: Build) -> None:
    rig = build()
    soon = time.time() + 0.3
    send_at = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(soon)) + f".{int(soon % 1 * 1000):03d}Z"
    )
    await rig.take(memory_job(rig.channel, body(send_at=send_at)))
    assert len(rig.transport.sends) == 1
    assert time.time() >= soon - 0.01


async def test_a_failed_send_is_parked_for_its_retry(build: Build) -> None:
    rig = build(Scripted(SendError("try later", code="send_failed")))
    await rig.take(memory_job(rig.channel, body(), message_id="m-4"))
    [retry] = rig.channel.published
    assert ".retry." in retry.routing_key and retry.headers["x-retry-count"] == 1
    assert await state_of(rig, "m-4") == "failed"
    assert rig.channel.log == [f"publish {retry.routing_key}", "event retrying", "ack 1"]


async def test_a_permanent_failure_is_dead_lettered(build: Build) -> None:
    rig = build(Scripted(SendError("no such user", code="not_on_whatsapp", transient=False)))
    await rig.take(memory_job(rig.channel, body()))
    assert rig.dead_letters() == ["not_on_whatsapp"]


async def test_an_expired_job_is_never_sent(build: Build) -> None:
    rig = build()
    await rig.take(memory_job(rig.channel, body(expires_at="2020-01-01T00:00:00Z")))
    assert rig.dead_letters() == ["expired"]
    assert rig.transport.sends == []


async def test_media_without_a_fetcher_is_dead_lettered(build: Build) -> None:
    rig = build()
    media = {"kind": "image", "url": "https://example.invalid/a.png"}
    await rig.take(memory_job(rig.channel, body(media=media)))
    assert rig.dead_letters() == ["media_unsupported"]


async def test_a_stop_leaves_the_jobs_unacked(build: Build) -> None:
    rig = build()
    rig.stopping.set()
    await rig.take(memory_job(rig.channel, body()))
    assert rig.channel.log == [] and rig.transport.sends == []


async def test_an_unexpected_error_after_begin_is_an_ambiguous_failed_send(build: Build) -> None:
    rig = build(Scripted(RuntimeError("a bug in the transport")))
    await rig.take(memory_job(rig.channel, body(), message_id="m-5"))
    [retry] = rig.channel.published
    assert retry.headers["x-last-error-code"] == "internal_error"
    assert await state_of(rig, "m-5") == "failed"
    assert rig.channel.acked(1)


async def test_a_batch_acks_its_sent_jobs_with_one_multiple_ack(build: Build) -> None:
    rig = build()
    jobs = [memory_job(rig.channel, body(text_message=f"n{n}"), tag=n) for n in (1, 2, 3)]
    await rig.take(*jobs)
    assert rig.channel.acks == [(3, True)]
    assert [e["status"] for e in rig.status.events] == ["sent"] * 3


# ------------------------------------------------------------------- a crash between steps


async def _crash(build: Build, key: str, **env: str) -> None:
    rig = build(Scripted(Crash()), **env)
    with pytest.raises(Crash):
        await rig.take(memory_job(rig.channel, body(), message_id=key, redelivered=True))
    assert rig.channel.log == []  # nothing published, nothing acked: redelivered
    assert await state_of(rig, key) == "sending"


async def test_a_crash_mid_send_is_resent_once_noted_ambiguous(build: Build) -> None:
    await _crash(build, "m-6")
    again = build()
    await again.take(memory_job(again.channel, body(), message_id="m-6", redelivered=True))
    assert len(again.transport.sends) == 1
    assert await state_of(again, "m-6") == "sent"
    noted = again.metrics.registry.get_sample_value(
        "worker_jobs_ambiguous_total", {"worker": WORKER, "action": "resend"}
    )
    assert noted == 1


async def test_a_crash_mid_send_with_skip_is_never_sent_twice(build: Build) -> None:
    await _crash(build, "m-7", WHATSAPP_AMBIGUOUS="skip")
    again = build(WHATSAPP_AMBIGUOUS="skip")
    await again.take(memory_job(again.channel, body(), message_id="m-7", redelivered=True))
    assert again.transport.sends == [] and again.channel.log == ["ack 1"]


async def test_a_job_in_hand_at_each_crash_is_dead_lettered_crash_loop(build: Build) -> None:
    for _ in range(CRASH_LIMIT):  # in hand at CRASH_LIMIT deaths
        await _crash(build, "m-8")
    last = build()
    await last.take(memory_job(last.channel, body(), message_id="m-8", redelivered=True))
    assert last.dead_letters() == ["crash_loop"]
    assert last.transport.sends == []
    assert await state_of(last, "m-8") == "failed"


async def test_a_crash_before_begin_leaves_no_row_and_is_sent_plainly(build: Build) -> None:
    rig = build()

    async def crash_on_connect(*, or_stuck: bool = False) -> bool:
        raise Crash

    rig.handler._sender.wait_connected = crash_on_connect  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await rig.take(memory_job(rig.channel, body(), message_id="m-9"))
    assert await state_of(rig, "m-9") is None
    again = build()
    await again.take(memory_job(again.channel, body(), message_id="m-9", redelivered=True))
    assert len(again.transport.sends) == 1
    assert again.metrics.registry.get_sample_value(
        "worker_jobs_ambiguous_total", {"worker": WORKER, "action": "resend"}
    ) in (None, 0.0)
