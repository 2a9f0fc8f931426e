"""The HTTP API's keys (WHATSAPP_API_KEYS), separate from the operator token (issue 32).

The variable lists one key per client, comma-separated::

    billing:Zx8...32-chars...,cron:sha256=9f86d081884c7d65...@shop+api

``client:secret`` gives the key itself (at least 24 characters of ``A-Z a-z 0-9 - _ . ~``): it is
hashed when the settings are read and only the hash is kept. ``client:sha256=<64 hex>`` gives
the SHA-256 of the key, so the key itself never sits in the environment. ``@a+b`` limits the
client to the accounts ``a`` and ``b`` (its jobs must name one of them). A presented key is
compared with every client's hash in constant time (``hmac.compare_digest``, no early exit).
Pure: no I/O library.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import attrs

_CLIENT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SECRET = re.compile(r"[A-Za-z0-9\-_.~]{24,256}")
_HASHED = re.compile(r"sha256=([0-9a-f]{64})")
_ACCOUNT = re.compile(r"[a-z0-9-]{1,32}")


@attrs.frozen
class ApiKey:
    client: str
    digest: bytes = attrs.field(repr=False)
    accounts: frozenset[str] | None = None  # None: any account

    def allows(self, account: str | None) -> bool:
        """Whether this client may send a job naming ``account`` (None: the pool chooses)."""
        return self.accounts is None or (account is not None and account in self.accounts)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """The keys of WHATSAPP_API_KEYS (empty: the API is off). Raises ValueError."""
    keys: list[ApiKey] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        keys.append(_one(entry))
    if len({key.client for key in keys}) != len(keys):
        raise ValueError("a client is named twice")
    return tuple(keys)


def _one(entry: str) -> ApiKey:
    client, colon, rest = entry.partition(":")
    if not colon or not _CLIENT.fullmatch(client):
        raise ValueError("client:key")
    secret, at, limit = rest.partition("@")
    accounts: frozenset[str] | None = None
    if at:
        names = frozenset(limit.split("+"))
        if not names or not all(_ACCOUNT.fullmatch(name) for name in names):
            raise ValueError("accounts")
        accounts = names
    hashed = _HASHED.fullmatch(secret)
    if hashed is not None:
        return ApiKey(client, bytes.fromhex(hashed[1]), accounts)
    if not _SECRET.fullmatch(secret):
        raise ValueError("key")
    return ApiKey(client, digest(secret), accounts)


def find_key(keys: tuple[ApiKey, ...], presented: str | None) -> ApiKey | None:
    """The client whose key ``presented`` is, or None; compares with every client (constant
    time in the key, the same work whichever matched)."""
    wanted = digest(presented or "")
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.digest, wanted) and presented:
            found = key
    return found


class RateGate:
    """Requests per second per client (WHATSAPP_API_RATE): a token bucket each, as deep as one
    second of the rate. ``take`` answers 0 (go) or the seconds to wait (429 Retry-After)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str, now: float, cost: float = 1.0) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= cost:
            self._buckets[client] = (tokens - cost, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (cost - tokens) / self.rate


__all__ = ["ApiKey", "RateGate", "digest", "find_key", "parse_api_keys"]
