"""``CloudApiTransport``: sends through Meta's WhatsApp Business Cloud API (httpx on trio).

- ``run`` holds one pooled HTTP client for the worker's life and checks the sending number
  (``GET /<phone-number-id>``): CONNECTED once Meta answers; while Meta cannot be reached,
  DISCONNECTED and checked again with backoff (jobs wait, no retry is spent).
- ``send`` POSTs one message. Its answer is classified by ``meta_errors``: a job error becomes
  a ``SendError`` with our code and retry class (a rate limit carries its reset hint); an
  account error (token expired or revoked, permission removed, account restricted) stops the
  account instead: the state turns LOGGED_OUT (or BANNED), ``health_problem`` says why
  (/healthz red), the job is held (``NotConnectedError``), and nothing more is sent until the
  number's check passes again (every ``STOPPED_RECHECK`` seconds, or at once on POST
  /login/relogin) - never dead-lettering every job of the queue one by one.
- A request that went out but got no answer (read timeout, connection dropped) is ambiguous
  (``send_timed_out``: WHATSAPP_AMBIGUOUS decides); one that never left is transient.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import eliot
import trio

from wa_trio import http_client
from wa_trio.config.settings import Settings
from wa_trio.core.cloud_limits import (
    PAIR_PAUSE,
    backoff_for,
    bucket_for,
    mps_for,
    tier_level,
    window_limit,
)
from wa_trio.core.errors import NotConnectedError, SendError
from wa_trio.core.media_rules import MediaPayload
from wa_trio.core.pacing import Pacer
from wa_trio.core.retry import Backoff
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState, LoginStatus, OutgoingMessage, SendResult
from wa_trio.transport.cloud_api import messages
from wa_trio.transport.cloud_api.meta_errors import Failure, classify
from wa_trio.transport.inbound import InboundMessage
from wa_trio.transport.receipts import ReceiptInfo
from wa_trio.transport.upload_cache import UploadCache

RATE_ATTEMPTS = 6  # a send tries this often through 130429 before the job's retry ladder
THROUGHPUT_CODE = 130429
PAIR_RATE_CODE = 131056
REQUEST_TIMEOUT = 20.0  # seconds per request (connect, write, read): Meta answers in ~1 s
STOPPED_RECHECK = 60.0  # seconds between checks of a stopped account


class CloudApiTransport:
    name = "cloud-api"
    cloud_templates = True
    banned_until = 0.0

    def __init__(
        self,
        settings: Settings,
        redactor: Redactor,
        *,
        timeout: float = REQUEST_TIMEOUT,
        stopped_recheck: float = STOPPED_RECHECK,
    ) -> None:
        assert settings.cloud_phone_number_id and settings.cloud_access_token
        self._base = settings.cloud_api_url.rstrip("/")
        self._number_id = settings.cloud_phone_number_id
        self._auth = {"Authorization": f"Bearer {settings.cloud_access_token}"}
        self._redactor = redactor
        self._timeout = timeout
        self._stopped_recheck = stopped_recheck
        self._session: http_client.Session | None = None
        self._state = ConnectionState.CONNECTING
        self._connected = trio.Event()
        self._stopped = trio.Event()  # set when a send stopped the account
        self._recheck = trio.Event()  # set by request_relogin
        self._problem: str | None = None
        self._linked_as: str | None = None
        self.sent = 0
        self.throttled = 0  # 130429 answers (the number over its throughput), backed off
        self._mps_override = settings.cloud_mps
        self.mps = mps_for(None, self._mps_override)
        self._pacer = _bucket(self.mps)
        self._paused_until = 0.0  # trio time: the number backs off after a 130429
        self._pair_paused: dict[str, float] = {}  # recipient -> trio time (131056, pair rate)
        self._window: deque[float] = deque()  # when the sends of the last second started
        self.uploads: UploadCache[str] = UploadCache(ttl=29 * 86400.0)
        self.on_receipt: Callable[[ReceiptInfo], None] | None = None  # set by the app
        #: inbound messages arrive by webhook (``meta_webhook``), which the app wires directly
        self.on_inbound: Callable[[InboundMessage], None] | None = None

    # ------------------------------------------------------------------ what others read

    @property
    def state(self) -> ConnectionState:
        return self._state

    def health_problem(self) -> str | None:
        return self._problem

    def login_status(self) -> LoginStatus:
        return LoginStatus(self._state, linkable=False, linked_as=self._linked_as)

    def request_relogin(self) -> None:
        """Check the number again now (after fixing the token or the account at Meta)."""
        self._recheck.set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # ------------------------------------------------------------------ the account's life

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with http_client.client(self._timeout) as session:
            self._session = session
            task_status.started()
            backoff = Backoff(initial=1.0, cap=60.0)
            while True:
                wait = await self._check_number(backoff)
                if self._state is ConnectionState.CONNECTED:
                    await self._stopped.wait()  # until a send stops the account
                    wait = self._stopped_recheck
                self._recheck = trio.Event()
                with trio.move_on_after(wait):
                    await self._recheck.wait()

    async def _check_number(self, backoff: Backoff) -> float:
        """Ask Meta about the sending number; the state follows. Returns how long to wait
        before the next check (inf while connected: a send's stop wakes the loop)."""
        assert self._session is not None
        try:
            answer = await http_client.call_json(
                self._session,
                "GET",
                f"{self._base}/{self._number_id}",
                headers=self._auth,
                params={"fields": "display_phone_number,verified_name,quality_rating,throughput"},
            )
        except http_client.HttpError as error:
            self._set(ConnectionState.DISCONNECTED, None, f"Meta unreachable ({error.message})")
            return backoff.next_delay()
        if 200 <= answer.status < 300:
            backoff.reset()
            shown = (
                answer.payload.get("display_phone_number")
                if isinstance(answer.payload, dict)
                else None
            )
            if isinstance(shown, str):
                digits = re.sub(r"\D", "", shown)[:15]
                self._linked_as = f"+{digits}" if digits else None
            self._pace_at(mps_for(tier_level(answer.payload), self._mps_override))
            self._set(ConnectionState.CONNECTED, None, "the number answers")
            return float("inf")
        failure = classify(answer.status, answer.payload, answer.headers, answer.retry_after)
        if failure.rule.stops_account:
            self._stop_account(failure)
            return self._stopped_recheck
        self._set(ConnectionState.DISCONNECTED, None, f"{failure.rule.code}: {failure.detail}")
        return max(backoff.next_delay(), failure.retry_after or 0.0)

    def _stop_account(self, failure: Failure) -> None:
        state = (
            ConnectionState.BANNED
            if failure.rule.code == "cloud_account_restricted"
            else ConnectionState.LOGGED_OUT
        )
        problem = (
            f"Cloud API refuses this account: {failure.rule.code} (Meta code "
            f"{failure.meta_code}: {failure.detail}). Jobs stay queued; fix it at Meta "
            "(docs/cloud-api.md), then restart or POST /login/relogin."
        )
        if self._problem != problem:
            eliot.log_message(
                message_type="wa_trio:whatsapp:attention",
                level="error",
                state=state.value,
                message=problem,
            )
            print(
                f"wa-trio: WHATSAPP {state.value.upper()}: {problem}", file=sys.stderr, flush=True
            )
        self._set(state, problem, failure.rule.code)
        self._stopped.set()

    def _set(self, state: ConnectionState, problem: str | None, why: str) -> None:
        old = self._state
        self._state = state
        self._problem = problem
        if state is ConnectionState.CONNECTED:
            self._stopped = trio.Event()
            self._connected.set()
        elif self._connected.is_set():
            self._connected = trio.Event()
        if old is not state:
            eliot.log_message(
                message_type="wa_trio:whatsapp:state", old=old.value, new=state.value, why=why
            )

    # ------------------------------------------------------------------ sends

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self._session is None or self._state is not ConnectionState.CONNECTED:
            raise NotConnectedError(f"Cloud API account is {self._state.value}")
        if message.group:
            raise SendError(
                "the Cloud API transport sends to phone numbers only",
                code="destination_unsupported",
                transient=False,
            )
        self._pair_rest(message.destination)
        media_id = await self._upload(message.media) if message.media is not None else None
        body = messages.message_body(message, media_id)
        for attempt in range(RATE_ATTEMPTS):
            await self._paced()
            answer = await self._call("POST", f"{self._base}/{self._number_id}/messages",
                                      json_body=body)  # fmt: skip
            if 200 <= answer.status < 300:
                found = messages.message_id(answer.payload)
                if found is None:
                    eliot.log_message(message_type="wa_trio:cloud_api:no_message_id")
                self.sent += 1
                return SendResult(message_id=found or "", timestamp=time.time())
            failure = classify(answer.status, answer.payload, answer.headers, answer.retry_after)
            if failure.meta_code == PAIR_RATE_CODE:  # this recipient rests, not the number
                rest = max(PAIR_PAUSE, failure.retry_after or 0.0)
                self._pair_paused[message.destination] = trio.current_time() + rest
                raise SendError(
                    f"Cloud API 131056: {failure.detail}",
                    code=failure.rule.code,
                    transient=True,
                    retry_after=rest,
                )
            if failure.meta_code != THROUGHPUT_CODE or attempt + 1 == RATE_ATTEMPTS:
                break
            # the number is over its throughput: it backs off (every send waits), the job
            # keeps its place and its retries (Meta took nothing)
            self.throttled += 1
            wait = backoff_for(attempt, failure.retry_after)
            self._paused_until = max(self._paused_until, trio.current_time() + wait)
            eliot.log_message(message_type="wa_trio:cloud_api:throttled", wait=round(wait, 3))
        raise self._failure(answer)

    def _pair_rest(self, recipient: str) -> None:
        """A recipient Meta said was written to too often (131056) rests ``PAIR_PAUSE``: a job
        to them meanwhile goes back to its retry ladder without a request (transient, with the
        rest left as its Retry-After); other recipients are not held up."""
        now = trio.current_time()
        if len(self._pair_paused) > 10_000:
            self._pair_paused = {k: t for k, t in self._pair_paused.items() if t > now}
        until = self._pair_paused.get(recipient, 0.0)
        if until > now:
            raise SendError(
                "Cloud API 131056: this recipient rests after too many messages (pair rate)",
                code="cloud_rate_limited",
                transient=True,
                retry_after=until - now,
            )

    def _pace_at(self, mps: int) -> None:
        if mps != self.mps:
            self.mps = mps
            self._pacer = _bucket(mps)
            eliot.log_message(message_type="wa_trio:cloud_api:throughput", mps=mps)

    async def _paced(self) -> None:
        """Wait for the number's turn: the end of a 130429 back-off, a token bucket at the
        level (smooth sends), then the window rule Meta applies, on the times sends really
        start (a stalled process must not release a bunch at once)."""
        now = trio.current_time()
        start = max(now, self._paused_until)
        wait = (start - now) + self._pacer.reserve(start, "")
        if wait > 0:
            await trio.sleep(wait)
        limit = window_limit(self.mps)
        while True:
            now = trio.current_time()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) < limit:
                self._window.append(now)
                return
            await trio.sleep(self._window[0] + 1.0 - now)

    async def _upload(self, media: MediaPayload) -> str:
        """The media's id at Meta: uploaded once per content (``UploadCache``, 29 days: Meta
        keeps an uploaded media 30)."""
        key = (media.sha256, media.kind, media.filename)
        known = self.uploads.get(key, time.time())
        if known is not None:
            return known
        mime = media.base_mime  # Meta's upload takes "audio/ogg" for an OGG/Opus voice note
        name = media.filename or f"{media.kind}.{mime.rsplit('/', 1)[-1]}"
        try:
            answer = await self._call(
                "POST",
                f"{self._base}/{self._number_id}/media",
                files={"file": (name, media.data, mime)},
                form={"messaging_product": "whatsapp", "type": mime},
            )
        except SendError as error:  # an upload lost is not a message maybe sent
            raise SendError(error.message, code="cloud_api_unavailable") from None
        uploaded = messages.uploaded_id(answer.payload) if answer.status < 300 else None
        if uploaded is None:
            raise self._failure(answer)
        self.uploads.put(key, uploaded, time.time())
        return uploaded

    def _failure(self, answer: http_client.JsonAnswer) -> SendError:
        failure = classify(answer.status, answer.payload, answer.headers, answer.retry_after)
        if failure.rule.stops_account:
            self._stop_account(failure)
            return NotConnectedError(failure.rule.code)
        return SendError(
            f"Cloud API {failure.meta_code or answer.status}: {failure.detail}",
            code=failure.rule.code,
            transient=failure.rule.transient,
            retry_after=failure.retry_after,
        )

    async def _call(self, method: str, url: str, **request: Any) -> http_client.JsonAnswer:
        assert self._session is not None
        try:
            return await http_client.call_json(
                self._session, method, url, headers=self._auth, **request
            )
        except http_client.HttpError as error:
            if error.written:
                raise SendError(
                    f"the Cloud API did not answer ({error.message}); it may have taken it",
                    code="send_timed_out",
                ) from None
            raise SendError(
                f"the Cloud API cannot be reached ({error.message})", code="cloud_api_unavailable"
            ) from None


def _bucket(mps: int) -> Pacer:
    rate, burst = bucket_for(mps)
    return Pacer(rate=rate, burst=burst)


__all__ = ["REQUEST_TIMEOUT", "STOPPED_RECHECK", "CloudApiTransport"]
