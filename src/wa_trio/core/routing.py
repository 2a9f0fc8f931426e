"""Which account sends a pool job (pure).

- A job naming an ``account`` goes to that account's queue (``unknown_account`` when this
  worker has no such account: dead-lettered).
- Otherwise rendezvous hashing over the accounts connected now: every account scores
  ``blake2b(account, recipient)`` and the highest wins, so a recipient keeps being served by the
  same account while that account is up; when it goes down, only its recipients move (each to
  its next-highest account), and they come back when it returns. The hash is stable across
  processes and restarts (not Python's randomised ``hash``).
- No account connected: the job waits (left unacked by the router).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import attrs

_DIGITS = re.compile(r"\D")


@attrs.frozen
class Route:
    account: str | None  # None: wait (no account connected), or dead-letter (``code``)
    code: str | None = None


def recipient_key(destination: str) -> str:
    """The recipient as hashing sees it: a number by its digits (any formatting), a group JID
    as is."""
    return destination.strip() if "@" in destination else _DIGITS.sub("", destination)


def score(account: str, recipient: str) -> int:
    digest = hashlib.blake2b(f"{account}\0{recipient}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(recipient: str, accounts: Iterable[str]) -> str | None:
    ranked = sorted(accounts, key=lambda account: (score(account, recipient), account))
    return ranked[-1] if ranked else None


def route(
    *,
    named: str | None,
    destination: str,
    accounts: tuple[str, ...],
    connected: Iterable[str],
) -> Route:
    if named is not None:
        if named not in accounts:
            return Route(None, "unknown_account")
        return Route(named)
    return Route(rendezvous(recipient_key(destination), connected))


__all__ = ["Route", "recipient_key", "rendezvous", "route", "score"]
