"""The only HTTP client importer (httpx, which runs on trio): one POST, errors as ours.

No retries inside the client: the callers' outboxes and ladders decide (a retry library inside
would hide attempts from our metrics and from ``Retry-After``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import httpx

from wa_trio.errors import WaTrioError


class HttpError(WaTrioError):
    """No answer (timeout, refused, reset): worth retrying."""

    code = "http_unavailable"


@attrs.frozen
class Answer:
    status: int
    retry_after: float | None  # seconds, from a Retry-After header (seconds or HTTP date)


@asynccontextmanager
async def client(seconds: float = 10.0) -> AsyncIterator[httpx.AsyncClient]:
    """A pooled client (connection reuse), no redirects, no retries; ``seconds`` bounds each
    request (connect, write, read)."""
    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as session:
        yield session


async def post(
    session: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str]
) -> Answer:
    """POST ``body``; the status and Retry-After (the body of the answer is not read far)."""
    try:
        response = await session.post(url, content=body, headers=dict(headers))
    except httpx.HTTPError as error:
        raise HttpError(f"{type(error).__name__}") from None
    return Answer(response.status_code, _retry_after(response.headers.get("retry-after")))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = ["Answer", "HttpError", "client", "post"]
