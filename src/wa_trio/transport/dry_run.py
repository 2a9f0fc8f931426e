"""A transport that never touches WhatsApp (staging, demos, load tests, CI).

Each would-be send is logged (destination masked in production, text never) and, when
WHATSAPP_DRY_RUN_FILE is set, appended to that file as one JSON line with ``message_id``,
``destination``, ``text_message``, ``user_id``, ``job_key`` and ``sent_at`` (and ``media``:
kind, mime type, size, sha256 and filename, never the bytes; the caption is
``text_message``). The file is the record the fault tests count: a line is flushed to the OS
before the send returns, so it survives ``kill -9`` of the worker.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import trio
from eliot import log_message

from wa_trio.core.errors import NotConnectedError, SendError
from wa_trio.core.media_rules import MediaPayload
from wa_trio.log import Redactor
from wa_trio.stores.files import open_private_append
from wa_trio.transport import ConnectionState, LoginStatus, OutgoingMessage, SendResult
from wa_trio.transport.inbound import MAX_TEXT, InboundMessage
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.upload_cache import UploadCache


class DryRunTransport:
    name = "dry-run"
    cloud_templates = True  # recorded: rehearse Cloud API jobs
    banned_until = 0.0

    def __init__(
        self,
        record_file: Path | None,
        redactor: Redactor,
        *,
        fail: FailurePlan | None = None,
        account: str = "default",
    ) -> None:
        self.account = account
        self._path = record_file
        self._file: IO[str] | None = None
        self._stopped = False  # ``run`` ended: a late send (a fenced worker's) is refused
        self._redactor = redactor
        self._fail = fail
        self.sent = 0
        self.uploads: UploadCache[str] = UploadCache()
        self.on_receipt: Callable[[ReceiptInfo], None] | None = None  # dry-run has none
        self.on_inbound: Callable[[InboundMessage], None] | None = None  # simulated only

    def simulate_inbound(self, sender: str, text: str) -> str:
        """A message "received" from ``sender`` (E.164), handed on as a real one would be
        (``wa-trio inbound``, POST /dry-run/inbound): the opt-out flow, replies that reset the
        unanswered count and the inbound events can be tried without a phone. Its id."""
        message_id = f"DRYIN{uuid.uuid4().hex[:16].upper()}"
        if self.on_inbound is not None:
            message = InboundMessage(
                self.account, message_id, sender, time.time(), "text",
                text=text[:MAX_TEXT], transport="dry-run",
            )  # fmt: skip
            self.on_inbound(message)
        return message_id

    def health_problem(self) -> str | None:
        return None

    def login_status(self) -> LoginStatus:
        return LoginStatus(ConnectionState.CONNECTED, linkable=False)

    def request_relogin(self) -> None:
        """Nothing to link in dry-run."""

    @property
    def state(self) -> ConnectionState:
        """Connected while ``run`` runs (and before: tests send without running it)."""
        return ConnectionState.DISCONNECTED if self._stopped else ConnectionState.CONNECTED

    async def wait_connected(self) -> None:
        if self._stopped:  # until it runs again (a fenced worker's transport reused)
            await trio.sleep_forever()
        # otherwise always connected; ``send`` checkpoints (like neonize's, no extra trip)

    async def send(self, message: OutgoingMessage) -> SendResult:
        await trio.lowlevel.checkpoint()
        if self._stopped:
            raise NotConnectedError("dry-run: the transport stopped")
        if self._fail is not None and self._fail.should_fail():
            raise SendError("dry-run: simulated transient failure", code="simulated_failure")
        message_id = "DRY" + uuid.uuid4().hex[:17].upper()
        now = time.time()
        uploaded = False
        if message.media is not None:  # a would-be upload, cached as the real transports do
            media = message.media
            key = (media.sha256, media.kind, media.filename)
            if self.uploads.get(key, now) is None:
                self.uploads.put(key, message_id, now)
                uploaded = True
        if self._path is not None:
            if self._file is None:
                # full numbers and texts: private (0600, a folder we create 0700)
                self._file = open_private_append(self._path)
            record: dict[str, Any] = {
                "message_id": message_id,
                "destination": message.destination,
                "text_message": message.text,
                "user_id": message.user_id,
                "job_key": message.job_key,
                "sent_at": now,
                "account": self.account,
            }
            if message.cloud_template is not None:
                record["cloud_template"] = dict(message.cloud_template)
            if message.media is not None:
                record["media"] = {**media_record(message.media), "uploaded": uploaded}
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        self.sent += 1
        log_message(
            message_type="wa_trio:dry_run:send",
            destination=self._redactor.phone(message.destination),
            message_id=message_id,
            job_key=message.job_key,
            chars=len(message.text),
        )
        return SendResult(message_id=message_id, timestamp=now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = False
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._stopped = True
            if self._file is not None:
                self._file.close()
                self._file = None


def media_record(media: MediaPayload) -> dict[str, Any]:
    """What a dry-run line says about media (never the bytes)."""
    return {
        "kind": media.kind,
        "mime_type": media.mime_type,
        "size": media.size,
        "sha256": media.sha256,
        "filename": media.filename,
    }


class FailurePlan:
    """Fail a fraction of sends, seeded so runs repeat (WHATSAPP_DRY_RUN_FAIL_RATE; fault tests)."""

    def __init__(self, rate: float, seed: int = 1) -> None:
        self._rate = rate
        self._random = random.Random(seed)

    def should_fail(self) -> bool:
        return self._random.random() < self._rate
