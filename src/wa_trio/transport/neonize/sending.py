"""One account's sends through its neonize client: number look-ups (cached), joined groups
(cached), media built and uploaded once per content, typing, and the send itself - each
blocking neonize call in a worker thread sharing the transport's ``CapacityLimiter(1)`` and
abandoned on cancel (see ``transport.py``)."""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import eliot
import trio

from wa_trio.config.settings import Settings
from wa_trio.core.errors import SendError
from wa_trio.core.media_rules import MediaPayload
from wa_trio.core.pacing import typing_seconds
from wa_trio.core.retry import classify_send_error
from wa_trio.log import Redactor
from wa_trio.stores import open as stores
from wa_trio.stores.numbers import Numbers, Resolution
from wa_trio.transport import OutgoingMessage, SendResult
from wa_trio.transport.neonize.go_maps import go_call
from wa_trio.transport.neonize.library import (
    joined_groups,
    neonize_errors,
    send_built,
    send_text,
    show_composing,
)
from wa_trio.transport.neonize.media import build_media, with_caption
from wa_trio.transport.upload_cache import UploadCache

GROUPS_TTL = 600.0  # seconds the joined-groups list is trusted
GROUPS_RECHECK = 30.0  # a group not in the list: ask again at most this often


class NeonizeSender:
    def __init__(
        self, settings: Settings, redactor: Redactor, limiter: trio.CapacityLimiter
    ) -> None:
        self.settings = settings
        self.redactor = redactor
        self._limiter = limiter
        self.numbers: Numbers | None = None  # opened by the transport's ``run``
        self.uploads: UploadCache[Any] = UploadCache()
        self._groups: set[str] = set()
        self._groups_at = -math.inf

    async def send(self, client: Any, message: OutgoingMessage) -> SendResult:
        if message.group:
            user, server = await self._group(client, message.destination), "g.us"
        else:
            user, server = await self.resolve(client, message.destination), ""
        media = message.media
        if self.settings.typing:
            voice = media is not None and media.kind == "voice"
            await self._show_typing(client, user, len(message.text), voice=voice, server=server)
        try:
            with neonize_errors(
                "WhatsApp send failed", code="send_failed", mask=self.redactor.text
            ):
                if media is None:
                    response = await go_call(  # abandoned on cancel: the module docstring
                        send_text, client, user, message.text, server, limiter=self._limiter
                    )
                else:
                    built = await self._built(client, media)
                    response = await go_call(
                        send_built,
                        client,
                        user,
                        with_caption(built, media.kind, message.text),
                        server,
                        limiter=self._limiter,
                    )
        except SendError as error:
            code, transient = classify_send_error(error.message)
            raise SendError(error.message, code=code, transient=transient) from None
        return SendResult(message_id=str(response.ID), timestamp=float(response.Timestamp))

    async def _built(self, client: Any, media: MediaPayload) -> Any:
        """The media message built and uploaded once per content (``UploadCache``)."""
        key = (media.sha256, media.kind, media.filename)
        built = self.uploads.get(key, time.time())
        if built is None:
            built = await go_call(build_media, client, media, limiter=self._limiter)
            self.uploads.put(key, built, time.time())
        return built

    async def _group(self, client: Any, jid: str) -> str:
        """The group's JID user once the account is known to be in it (the joined-groups list
        is cached ``GROUPS_TTL`` seconds and asked again on a miss, at most every
        ``GROUPS_RECHECK``); SendError ``not_in_group`` otherwise."""
        now = trio.current_time()
        stale = now - self._groups_at > GROUPS_TTL
        missing = jid not in self._groups and now - self._groups_at > GROUPS_RECHECK
        if stale or missing:
            with neonize_errors(
                "joined groups look-up failed", code="lookup_failed", mask=self.redactor.text
            ):
                self._groups = await go_call(joined_groups, client, limiter=self._limiter)
            self._groups_at = now
        if jid not in self._groups:
            # only a list asked for just now is proof; an older one may predate a join (the
            # retry comes after GROUPS_RECHECK, when the list is asked again; issue 27)
            asked_now = stale or missing
            raise SendError(
                "this account is not in the group", code="not_in_group", transient=not asked_now
            )
        return jid.removesuffix("@g.us")

    async def _show_typing(
        self, client: Any, jid_user: str, chars: int, *, voice: bool = False, server: str = ""
    ) -> None:
        """WHATSAPP_TYPING=on: "composing" presence ("recording audio" before a voice note)
        for a time growing with the text."""
        try:
            with neonize_errors("typing", code="typing_failed", mask=self.redactor.text):
                await go_call(
                    partial(show_composing, audio=voice, server=server),
                    client,
                    jid_user,
                    True,
                    limiter=self._limiter,
                )
            await trio.sleep(typing_seconds(chars))
        except SendError as error:  # typing is cosmetic; never fail the send
            eliot.log_message(message_type="wa_trio:whatsapp:typing_failed", error=error.message)

    async def resolve(self, client: Any, number: str) -> str:
        """The JID user to send to (the number's digits) once WhatsApp says the number is on
        WhatsApp (cached); SendError if it is not."""
        cache = self.numbers
        cached = await trio.to_thread.run_sync(cache.get, number) if cache else None
        if cached is None:
            with neonize_errors(
                "number look-up failed", code="lookup_failed", mask=self.redactor.text
            ):
                answers = await go_call(client.is_on_whatsapp, number, limiter=self._limiter)
            answer = answers[0] if answers else None
            on = bool(answer is not None and answer.IsIn)
            cached = Resolution(number, on, canonical_user(number, answer) if on else "",
                                time.time())  # fmt: skip
            if cache is not None:
                await trio.to_thread.run_sync(cache.put, cached)
        if not cached.on_whatsapp:
            raise SendError(
                "the number is not on WhatsApp", code="not_on_whatsapp", transient=False
            )
        return cached.jid_user


def canonical_user(number: str, answer: Any) -> str:
    """The JID user to send to: the number WhatsApp answered with when it is a phone-number JID
    (its canonical form: Brazil's 9th digit, Mexico's 1 and Argentina's 9 come back as
    WhatsApp registered them; sending to the digits of the job addressed another JID, issue 27);
    the job's digits when the answer is a hidden id (``@lid``): whatsmeow maps a number itself."""
    jid = answer.JID
    if jid.Server == "s.whatsapp.net" and jid.User.isdigit():
        return str(jid.User)
    return number.lstrip("+")


def open_numbers(settings: Settings, ttl: float) -> Numbers:
    """The account's number cache (blocking): in the session folder, or in the store (every
    replica that runs the account sees it)."""
    return stores.numbers(settings, ttl)
