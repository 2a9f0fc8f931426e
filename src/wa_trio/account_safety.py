"""Account safety at run time: opt-outs, the unanswered-message budget, the reach-out lock.

The decisions are ``safety_rules``'s; this object keeps what they need in memory (loaded from
``contacts.db`` at start) so the hot path costs a few dict look-ups:

- ``verdict(number)`` before a send; ``after_send(number)`` after WhatsApp took one;
  ``after_failure(code)`` when a send failed (WhatsApp's 463 starts the reach-out pause);
- ``on_inbound(message)``: a reply resets the sender's count; an opt-out keyword suppresses the
  sender (and queues the one answer, WHATSAPP_OPTOUT_REPLY);
- ``run`` writes counts and opt-outs to ``contacts.db`` every ``FLUSH_EVERY`` seconds (one
  transaction; a crash loses at most that much counting), reloads the file when another process
  changed it (``wa-trio optout add/remove``: effective within that interval), and sends the
  opt-out answers through the transport (outside pacing: one per opt-out, ever).
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable

import eliot
import trio

from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError, WaTrioError
from wa_trio.core.identity import person_key
from wa_trio.core.safety_rules import (
    DAILY_WINDOW,
    Verdict,
    is_optout,
    judge,
    keyword_set,
    over_daily_limit,
)
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.stores import open as stores
from wa_trio.stores.contacts import Contacts
from wa_trio.transport import OutgoingMessage, Transport
from wa_trio.transport.inbound import InboundMessage

FLUSH_EVERY = 1.0


class AccountSafety:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        redactor: Redactor,
        store: Contacts,
        *,
        clock: Callable[[], float] = time.time,
        optout_store: Contacts | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.redactor = redactor
        self.store = store  # this account's counts
        #: the opt-out list: one for every account of the session (a STOP to one account
        #: stops them all); the account's own store when there is one account
        self.optout_store = optout_store or store
        self._clock = clock
        self._keywords = keyword_set(settings.optout_keywords)
        snapshot = store.snapshot()
        self._optouts = {person_key(n) for n in self.optout_store.snapshot().optouts}
        self._counts = {person_key(n): count for n, count in snapshot.unanswered.items()}
        #: the recipients of the last 24 hours, oldest first (WHATSAPP_CLOUD_DAILY_LIMIT)
        self._window = collections.OrderedDict(sorted(snapshot.last_sent.items(), key=_second))
        self._version = (store.data_version(), self.optout_store.data_version())
        self._sent: dict[str, int] = {}  # not yet written
        self._replies: dict[str, float] = {}
        self._new_optouts: list[tuple[str, str]] = []  # (number, source)
        #: who wrote in the last 24 hours, oldest first (the Cloud API's customer-service
        #: window: the pool routes free text there only inside it; in memory, so a restart
        #: sends such jobs to other accounts until the person writes again)
        self._heard: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Cloud API: BSUID -> the number a webhook carried with it (``_person``)
        self._links: dict[str, str] = {}
        self.reachout_until = 0.0
        self._answers_in, self._answers_out = trio.open_memory_channel[str](1000)
        metrics.unanswered_limit.set(settings.unanswered_limit or 0)
        metrics.unanswered_highest.set_function(lambda: max(self._counts.values(), default=0))
        metrics.reachout_paused_until.set_function(lambda: self.reachout_until)

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, redactor: Redactor) -> AccountSafety:
        store, shared = await trio.to_thread.run_sync(stores.contacts, settings)
        return await trio.to_thread.run_sync(
            lambda: cls(settings, metrics, redactor, store, optout_store=shared)
        )

    # ------------------------------------------------------------------ the hot path

    def verdict(self, number: str) -> Verdict | None:
        number = person_key(number)  # one key per person (identity.py)
        return self._judge(number) or self._daily(number)

    def _daily(self, number: str) -> Verdict | None:
        """WHATSAPP_CLOUD_DAILY_LIMIT over the recipients of the last 24 hours."""
        limit = self.settings.cloud_daily_limit if self.settings.transport == "cloud-api" else None
        if limit is None:
            return None
        now = self._clock()
        window = self._window
        while window and next(iter(window.values())) < now - DAILY_WINDOW:
            window.popitem(last=False)
        oldest = next(iter(window.values()), None)
        return over_daily_limit(
            limit=limit, in_window=number in window, count=len(window), oldest=oldest, now=now
        )

    def window_open(self, number: str) -> bool:
        """Whether ``number``'s person wrote to this account in the last 24 hours."""
        horizon = self._clock() - DAILY_WINDOW
        heard = self._heard
        while heard and next(iter(heard.values())) < horizon:
            heard.popitem(last=False)
        return person_key(number) in heard

    def _judge(self, number: str) -> Verdict | None:
        return judge(
            opted_out=number in self._optouts,
            unanswered=self._counts.get(number, 0),
            known=number in self._counts,
            limit=self.settings.unanswered_limit,
            action=self.settings.unanswered_action,
            reachout_until=self.reachout_until,
            now=self._clock(),
        )

    def after_send(self, number: str) -> None:
        number = person_key(number)
        self._counts[number] = self._counts.get(number, 0) + 1
        self._sent[number] = self._sent.get(number, 0) + 1
        self._window[number] = self._clock()  # the last 24 hours' recipients, oldest first
        self._window.move_to_end(number)

    def after_failure(self, code: str, number: str | None = None) -> None:
        if code == "opted_out" and number is not None:  # Meta's 131050: they stopped marketing
            self._opt_out(person_key(number), "cloud:131050")
            return
        if code == "reachout_timelocked":
            until = self._clock() + self.settings.reachout_pause
            if until > self.reachout_until + 60:
                eliot.log_message(
                    message_type="wa_trio:safety:reachout_paused",
                    level="warning",
                    until=until,
                    message="WhatsApp refused a new contact (463): sends to new contacts wait",
                )
            self.reachout_until = max(self.reachout_until, until)

    # ------------------------------------------------------------------ what comes in

    def on_inbound(self, message: InboundMessage) -> None:
        if not message.direct:
            return
        sender = self._person(message)
        self._counts[sender] = 0  # a reply resets the budget (and makes a known chat)
        self._replies[sender] = message.timestamp or self._clock()
        self._heard[sender] = self._clock()
        self._heard.move_to_end(sender)
        if is_optout(message.text, self._keywords):
            self._opt_out(sender, "inbound")

    def _person(self, message: InboundMessage) -> str:
        """The sender's one key (core/identity.py): their canonical number; on the Cloud API a
        BSUID seen with a number is linked to it (an opt-out made under the BSUID alone is
        then made under the number too), and a BSUID alone stands for the number it was
        linked to, or for itself."""
        user_id = message.user_id
        if message.sender is None:
            assert user_id is not None  # ``direct``
            return self._links.get(user_id, user_id)
        number = person_key(message.sender)
        if user_id is not None and self._links.get(user_id) != number:
            self._links[user_id] = number
            if user_id in self._optouts:
                self._opt_out(number, "inbound")
        return number

    def _opt_out(self, number: str, source: str) -> None:
        """Onto the list (written at the next flush, with where it came from)."""
        if number in self._optouts:
            return
        self._optouts.add(number)
        self._new_optouts.append((number, source))
        self.metrics.optouts.inc()
        eliot.log_message(
            message_type="wa_trio:safety:opted_out",
            number=self.redactor.phone(number),
            source=source,
        )

    # ------------------------------------------------------------------ the task

    async def run(
        self, transport: Transport, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer_optouts, transport)
            task_status.started()
            try:
                while True:
                    await trio.sleep(FLUSH_EVERY)
                    await self.flush()
            finally:
                with trio.CancelScope(shield=True):
                    await self.flush()

    async def flush(self) -> None:
        sent, self._sent = self._sent, {}
        replies, self._replies = self._replies, {}
        new, self._new_optouts = self._new_optouts, []

        def write() -> tuple[int, int]:
            if sent or replies:
                self.store.record(sent, replies, self._clock())
            for number, source in new:
                self.optout_store.add_optout(number, f"{source}:{self.settings.account_name}")
            return self.store.data_version(), self.optout_store.data_version()

        try:
            version = await trio.to_thread.run_sync(write)
        except (sqlite3.Error, WaTrioError) as error:  # a disk or the store failing: next time
            for number, count in sent.items():
                self._sent[number] = self._sent.get(number, 0) + count
            self._replies = {**replies, **self._replies}
            self._new_optouts[:0] = new
            eliot.log_message(
                message_type="wa_trio:safety:flush_failed", level="error", error=str(error)[:200]
            )
            return
        if self.settings.optout_reply:
            for number, source in new:
                if source == "inbound" and number.startswith("+"):  # a STOP is answered once
                    # (a BSUID alone is not an address we send to); Meta's 131050 is not ours to
                    self._answers_in.send_nowait(number)
        if version != self._version:  # another connection (the CLI, an account) changed them
            self._version = version
            snapshot = await trio.to_thread.run_sync(self.store.snapshot)
            shared = await trio.to_thread.run_sync(self.optout_store.snapshot)
            self._optouts = {person_key(number) for number in shared.optouts}
            for number, count in snapshot.unanswered.items():
                self._counts.setdefault(person_key(number), count)

    async def _answer_optouts(self, transport: Transport) -> None:
        reply = self.settings.optout_reply or ""
        async for number in self._answers_out:
            if not await trio.to_thread.run_sync(self.optout_store.claim_reply, number):
                continue  # answered before (once per opt-out, ever)
            await transport.wait_connected()
            digits = number.lstrip("+")
            message = OutgoingMessage(number, reply, "wa-trio", f"optout-reply:{digits}")
            try:
                await transport.send(message)
            except SendError as error:
                eliot.log_message(
                    message_type="wa_trio:safety:optout_reply_failed",
                    number=self.redactor.phone(number),
                    code=error.code,
                )

    def close(self) -> None:
        self.store.close()
        if self.optout_store is not self.store:
            self.optout_store.close()


def _second(item: tuple[str, float]) -> float:
    return item[1]


__all__ = ["FLUSH_EVERY", "AccountSafety"]
