"""Media bytes for a job: fetched safely (URL) or decoded (inline), sniffed, checked, cached,
then made ready for WhatsApp (``media/prepare.py``: voice notes, stickers, lengths).

Fetching a URL (``MediaFetcher.payload``):

- the host is resolved here and every address checked (``media.refusal``: loopback, private,
  link-local, metadata... refused unless WHATSAPP_MEDIA_ALLOW_PRIVATE=on); the request then goes
  to the checked address itself (Host header and TLS name kept), so a second DNS answer cannot
  slip a private address in (DNS rebinding);
- redirects are followed by hand, at most ``MAX_REDIRECTS``, each hop checked the same way;
- the body streams until the cap (``media.cap``) and stops there (``media_too_large``); the
  whole fetch is bounded by WHATSAPP_MEDIA_TIMEOUT;
- 404/410 (and other 4xx) are permanent (``media_not_found``); 5xx, 429, timeouts and resets
  are transient (``media_fetch_failed``: the job goes through the retry ladder);
- the bytes are cached by URL and content hash (``media_cache``): within ``FRESH_FOR`` a URL is
  not fetched again at all, after that a conditional GET (ETag / Last-Modified) revalidates it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from urllib.parse import urljoin, urlsplit, urlunsplit

import eliot
import trio

from wa_trio import http_client
from wa_trio.config.settings import Settings
from wa_trio.core.media_rules import (
    MediaPayload,
    MediaProblem,
    MediaSpec,
    ascii_host,
    cap,
    payload,
    refusal,
    too_many_pixels,
    url_problem,
)
from wa_trio.media.cache import MediaCache, UrlEntry
from wa_trio.media.images import pixels_of
from wa_trio.media.prepare import Preparer
from wa_trio.media.sniff import mime_of
from wa_trio.metrics import Metrics

MAX_REDIRECTS = 3
FRESH_FOR = 300.0  # seconds a fetched URL is used without asking the server again
_REDIRECTS = {301, 302, 303, 307, 308}

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (trio's getaddrinfo runs in a thread)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as error:
        raise MediaProblem(
            "media_fetch_failed", f"the media host does not resolve ({error})"
        ) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class MediaFetcher:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        cache: MediaCache,
        *,
        resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cache = cache
        self._session: http_client.Session | None = None
        #: why an address may not be fetched (``media.refusal`` under the settings)
        self.refusal: Callable[[str], str | None] = partial(
            refusal, allow_private=settings.media_allow_private
        )
        self.resolver = resolver
        self.fetches = 0  # requests that downloaded a body (the bench counts them)
        #: voice notes, stickers, lengths and thumbnails made once per content
        self.preparer = Preparer(settings.transport)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the pooled HTTP client for the worker's life (a task of the root nursery)."""
        async with http_client.client(self.settings.media_timeout) as session:
            self._session = session
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._session = None

    async def payload(self, spec: MediaSpec) -> MediaPayload:
        """The checked bytes of ``spec``.

        Raises:
            MediaProblem: with its code (see the module docstring and ``media``).
        """
        if spec.kind not in self.settings.media_kinds:
            raise MediaProblem(
                "media_unsupported", f"{spec.kind} is not in WHATSAPP_MEDIA_KINDS on this worker"
            )
        limit = cap(spec.kind, self.settings.media_max_bytes)
        if spec.data is not None:
            if len(spec.data) > limit:
                raise MediaProblem("media_too_large", f"{len(spec.data)} bytes, at most {limit}")
            data = spec.data
        else:
            assert spec.url is not None
            data = await self._bytes_of(spec.url, limit)
        sniffed = await trio.to_thread.run_sync(mime_of, data)
        checked = payload(spec, data, sniffed)
        if spec.kind in {"image", "sticker"}:
            pixels = await trio.to_thread.run_sync(pixels_of, data)
            why = too_many_pixels(pixels, self.settings.media_max_pixels)
            if why is not None:
                raise MediaProblem("media_too_large", why)
        ready = await self.preparer.prepared(checked)
        self.metrics.jobs_by_kind.labels(spec.kind).inc()
        return ready

    async def _bytes_of(self, url: str, limit: int) -> bytes:
        cached = await trio.to_thread.run_sync(self.cache.entry, url)
        if cached is not None and time.time() - cached.fetched_at < FRESH_FOR:
            kept = await trio.to_thread.run_sync(self.cache.read, cached.sha256)
            if kept is not None and len(kept) <= limit:
                self.metrics.media_cache_hits.labels("url").inc()
                return kept
        started = time.perf_counter()
        data = b""
        with trio.move_on_after(self.settings.media_timeout) as scope:
            data = await self._fetch(url, limit, cached)
        if scope.cancelled_caught:
            self.metrics.media_fetches.labels("timeout").inc()
            raise MediaProblem(
                "media_fetch_failed",
                f"the media server did not answer within {self.settings.media_timeout:g}s",
            )
        self.metrics.media_fetch_seconds.observe(time.perf_counter() - started)
        return data

    async def _fetch(self, url: str, limit: int, entry: UrlEntry | None) -> bytes:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            why = url_problem(current)
            if why is not None:  # the job's URL was checked: this is a redirect's
                self.metrics.media_fetches.labels("refused").inc()
                raise MediaProblem("media_url_refused", f"a redirect's URL {why}")
            parts = urlsplit(current)
            name = ascii_host(parts.hostname or "") or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = await self._checked_address(name, port)
            shown = f"[{name}]" if ":" in name else name
            headers = {
                "Host": shown if parts.port is None else f"{shown}:{parts.port}",
                "Accept-Encoding": "identity",
            }
            if entry is not None and current == url:
                if entry.etag:
                    headers["If-None-Match"] = entry.etag
                if entry.last_modified:
                    headers["If-Modified-Since"] = entry.last_modified
            host = f"[{address}]" if ":" in address else address
            pinned = urlunsplit(
                (parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, "")
            )
            if self._session is None:
                raise MediaProblem("media_fetch_failed", "the worker is stopping")
            try:
                answer = await http_client.fetch_capped(
                    self._session,
                    pinned,
                    max_bytes=limit,
                    headers=headers,
                    sni_hostname=name if parts.scheme == "https" else None,
                )
            except http_client.HttpError as error:
                self.metrics.media_fetches.labels("unreachable").inc()
                raise MediaProblem(
                    "media_fetch_failed", f"the media server did not answer ({error.message})"
                ) from None
            if answer.status in _REDIRECTS and answer.headers.get("location"):
                try:
                    current = urljoin(current, answer.headers["location"])
                except ValueError:
                    current = "unparseable redirect"  # refused by url_problem on the next hop
                continue
            return await self._settle(url, answer, entry, limit)
        self.metrics.media_fetches.labels("refused").inc()
        raise MediaProblem("media_url_refused", f"more than {MAX_REDIRECTS} redirects")

    async def _settle(
        self, url: str, answer: http_client.Fetched, entry: UrlEntry | None, limit: int
    ) -> bytes:
        if answer.status == 304 and entry is not None:
            data = await trio.to_thread.run_sync(self.cache.read, entry.sha256)
            if data is not None:
                await trio.to_thread.run_sync(self.cache.touch, url)
                self.metrics.media_cache_hits.labels("revalidated").inc()
                return data
        if answer.status == 200 and answer.over_cap:
            self.metrics.media_fetches.labels("too_large").inc()
            raise MediaProblem("media_too_large", f"the media is larger than {limit} bytes")
        if answer.status == 200 and answer.body is not None:
            self.fetches += 1
            self.metrics.media_fetches.labels("fetched").inc()
            self.metrics.media_fetch_bytes.inc(len(answer.body))
            await trio.to_thread.run_sync(self._store, url, answer)
            return answer.body
        if answer.status >= 500 or answer.status in {408, 425, 429}:
            self.metrics.media_fetches.labels("server_error").inc()
            raise MediaProblem(
                "media_fetch_failed", f"the media server answered HTTP {answer.status}"
            )
        self.metrics.media_fetches.labels("not_found").inc()
        raise MediaProblem("media_not_found", f"the media server answered HTTP {answer.status}")

    def _store(self, url: str, answer: http_client.Fetched) -> None:
        assert answer.body is not None
        self.cache.store(
            url,
            hashlib.sha256(answer.body).hexdigest(),
            answer.body,
            answer.headers.get("etag"),
            answer.headers.get("last-modified"),
        )

    async def _checked_address(self, host: str, port: int) -> str:
        addresses = await self.resolver(host, port)
        if not addresses:
            raise MediaProblem("media_fetch_failed", "the media host has no address")
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                self.metrics.media_fetches.labels("refused").inc()
                eliot.log_message(message_type="wa_trio:media:refused", reason=why)
                raise MediaProblem(
                    "media_url_refused", f"the media URL resolves to {why}; not fetched"
                )
        return addresses[0]


__all__ = ["FRESH_FOR", "MAX_REDIRECTS", "MediaFetcher", "resolve"]
