"""The only HTTP client importer (httpx, which runs on trio): one POST, errors as ours.

No retries inside the client: the callers' outboxes and ladders decide (a retry library inside
would hide attempts from our metrics and from ``Retry-After``).
"""

from __future__ import annotations

import email.utils
import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx

from wa_trio.core.errors import WaTrioError

#: the pooled client callers hold (they name the type without importing httpx)
Session = httpx.AsyncClient


class HttpError(WaTrioError):
    """No answer (timeout, refused, reset): worth retrying.

    ``written``: the whole request had gone out when the answer failed (a read timeout, a
    connection dropped before the answer), so the peer may have acted on it; False when it
    never left (refused, connect timeout, no free connection, a write that did not finish).
    """

    code = "http_unavailable"

    def __init__(self, message: str, *, written: bool = False) -> None:
        super().__init__(message)
        self.written = written


#: failures that happen after the request was written: the peer may have acted on it
_AFTER_WRITE = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


@attrs.frozen
class Answer:
    status: int
    retry_after: float | None  # seconds, from a Retry-After header (seconds or HTTP date)


@attrs.frozen
class JsonAnswer:
    """An answer whose body was read (bounded) and parsed as JSON when it could be."""

    status: int
    payload: Any  # the parsed JSON; None when the body is empty or not JSON
    headers: Mapping[str, str]
    retry_after: float | None


@functools.cache
def tls() -> ssl.SSLContext:
    """The process's TLS settings for its clients, made once: what httpx makes for each new
    client (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR) costs ~30 ms of the event loop
    reading the CA file; 200 accounts starting made that seconds, and leases fenced."""
    return httpx.create_ssl_context()


@asynccontextmanager
async def client(seconds: float = 10.0) -> AsyncIterator[httpx.AsyncClient]:
    """A pooled client (connection reuse), no redirects, no retries; ``seconds`` bounds each
    request (connect, write, read)."""
    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False, verify=tls()) as session:
        yield session


async def post(
    session: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str]
) -> Answer:
    """POST ``body``; the status and Retry-After. At most ``MAX_ANSWER_READ`` bytes of the
    answer are read (decoded: a gzip answer is bounded the same way), then it is closed: a
    receiver that streams a huge answer costs us nothing."""
    try:
        request = session.build_request("POST", url, content=body, headers=dict(headers))
        response = await session.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if read > MAX_ANSWER_READ:
                    break
        finally:
            await response.aclose()
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise HttpError(f"{type(error).__name__}") from None
    return Answer(response.status_code, _retry_after(response.headers.get("retry-after")))


MAX_ANSWER_READ = 4096  # bytes of a webhook receiver's answer read at most


MAX_JSON_ANSWER = 1 << 20  # bytes of an answer body read at most


async def call_json(
    session: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes, str]] | None = None,
    form: Mapping[str, str] | None = None,
) -> JsonAnswer:
    """One request with a JSON body (or none); the answer's JSON, read up to
    ``MAX_JSON_ANSWER`` bytes.

    Raises:
        HttpError: no answer; ``written`` tells whether the request had gone out.
    """
    request = session.build_request(
        method,
        url,
        json=json_body,
        headers=dict(headers or {}),
        params=params,
        files=dict(files) if files else None,  # multipart/form-data (uploads)
        data=dict(form) if form else None,
    )
    try:
        response = await session.send(request, stream=True)
        try:
            raw = bytearray()
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_JSON_ANSWER:
                    break  # the response is closed below (httpx#3686: its inner generators
                    # are then left to the GC, which trio reports; nothing stays open)
        finally:
            await response.aclose()
    except httpx.HTTPError as error:
        raise HttpError(type(error).__name__, written=isinstance(error, _AFTER_WRITE)) from None
    try:
        payload = json.loads(bytes(raw)) if raw else None
    except ValueError:
        payload = None
    return JsonAnswer(
        response.status_code,
        payload,
        dict(response.headers),
        _retry_after(response.headers.get("retry-after")),
    )


@attrs.frozen
class Fetched:
    """A GET's answer: the body only for a 200 within the cap."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes | None = attrs.field(default=None, repr=False)
    over_cap: bool = False  # the body (declared or as it streamed) passed ``max_bytes``


async def fetch_capped(
    session: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    sni_hostname: str | None = None,
) -> Fetched:
    """GET ``url`` (no redirects followed: the caller checks each hop), streaming the body and
    stopping as soon as it passes ``max_bytes``. ``sni_hostname``: the TLS name when ``url``
    names the host by the IP the caller resolved and checked (no second DNS look-up).

    Raises:
        HttpError: no answer (refused, timeout, reset).
    """
    extensions = {"sni_hostname": sni_hostname} if sni_hostname else None
    try:
        request = session.build_request(
            "GET", url, headers=dict(headers or {}), extensions=extensions
        )
        response = await session.send(request, stream=True)
        try:
            answer_headers = dict(response.headers)
            if response.status_code != 200:
                return Fetched(response.status_code, answer_headers)
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                return Fetched(200, answer_headers, over_cap=True)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:  # stop reading; the response is closed below
                    return Fetched(200, answer_headers, over_cap=True)
        finally:
            await response.aclose()
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise HttpError(type(error).__name__, written=isinstance(error, _AFTER_WRITE)) from None
    return Fetched(200, answer_headers, bytes(body))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isascii() and value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = [
    "Answer",
    "Fetched",
    "HttpError",
    "JsonAnswer",
    "Session",
    "call_json",
    "client",
    "fetch_capped",
    "post",
]
