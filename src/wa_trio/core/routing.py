"""Which account sends a pool job (pure).

- A job naming an ``account`` goes to that account's queue (``unknown_account`` when this
  worker has no such account: dead-lettered).
- Otherwise rendezvous hashing over the accounts connected now: every account scores
  ``blake2b(account, recipient)`` and the highest wins, so a recipient keeps being served by the
  same account while that account is up; when it goes down, only its recipients move (each to
  its next-highest account), and they come back when it returns. The hash is stable across
  processes and restarts (not Python's randomised ``hash``).
- Only accounts whose transport can send the job take part (``can_send``): a
  ``cloud_template`` alone needs a transport that sends Cloud API templates (none configured:
  dead-lettered ``cloud_template_unsupported``); free text or media without a
  ``cloud_template`` goes through the Cloud API only inside the recipient's 24-hour
  customer-service window (Meta refuses it outside: 131047).
- No capable account connected: the job waits (left unacked by the router).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import attrs

_DIGITS = re.compile(r"\D")


@attrs.frozen
class Needs:
    """What a pool job asks of the account that sends it (read from its body)."""

    cloud_only: bool = False  # a cloud_template and nothing else to send
    free_form: bool = True  # no cloud_template: text, a rendered template or media


def needs_of(data: object) -> Needs:
    """The job's needs as far as its body can be read (validation gives the real reasons)."""
    if not isinstance(data, dict) or "cloud_template" not in data:
        return Needs()
    other = any(field in data for field in ("text_message", "template", "media"))
    return Needs(cloud_only=not other, free_form=False)


def can_send(needs: Needs, *, cloud_templates: bool, windowed: bool, window_open: bool) -> bool:
    """Whether an account whose transport sends Cloud API templates (``cloud_templates``) and
    sends free text only inside the customer-service window (``windowed``: the Cloud API) can
    send a job with ``needs`` to a recipient whose window is (not) open."""
    if needs.cloud_only:
        return cloud_templates
    return not (windowed and needs.free_form) or window_open


def pinned_key(own_key: str, own: str, other: str) -> str:
    """The routing key that pins a job to account ``other``, from account ``own``'s own
    (``<WHATSAPP_ROUTING_KEY>.<own>``)."""
    return f"{own_key.removesuffix('.' + own)}.{other}"


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
    capable: Iterable[str] | None = None,
) -> Route:
    """``connected``: the accounts that can send this job now; ``capable``: those configured
    that ever could (None: every account)."""
    if named is not None:
        if named not in accounts:
            return Route(None, "unknown_account")
        return Route(named)
    if capable is not None and not any(True for _ in capable):
        return Route(None, "cloud_template_unsupported")
    return Route(rendezvous(recipient_key(destination), connected))


__all__ = [
    "Needs",
    "Route",
    "can_send",
    "needs_of",
    "pinned_key",
    "recipient_key",
    "rendezvous",
    "route",
    "score",
]
