"""One key per person, whatever form of their number a job, a STOP or an operator used (pure).

Three countries give one mobile number two international forms, and WhatsApp, our publishers
and libphonenumber do not agree on one (issue 27):

- Brazil added a 9 to every mobile number (2012-2016): ``+55 11 8765-4321`` and
  ``+55 11 98765-4321`` are the same phone; WhatsApp still answers older accounts without it.
- Mexico dropped the ``1`` that mobiles took after the country code (2019): ``+52 1 55...`` and
  ``+52 55...``; WhatsApp ids of older accounts keep it.
- Argentina dials mobiles from abroad with a ``9`` after the country code: ``+54 9 11...``;
  publishers often write ``+54 11...``.

``person_key`` maps each to the canonical E.164 form (libphonenumber's: with Brazil's 9, without
Mexico's 1, with Argentina's 9). Opt-outs, unanswered counts and per-recipient pacing use it.

On the Cloud API, Meta's business-scoped user id (BSUID, e.g. ``US.13491208655302741918``: the
user's ISO country code, a period, up to 128 letters and digits; a parent BSUID adds ``ENT.``)
names a person whose webhooks may carry no phone number (usernames, 2026). ``bsuid`` checks
one; it is that person's key until a webhook carrying both links it to their number.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[\s\-.()]")
_BR_OLD_MOBILE = re.compile(r"\+55([1-9][1-9])([6-9]\d{7})")
_MX_OLD_MOBILE = re.compile(r"\+521(\d{10})")
_AR_WITHOUT_9 = re.compile(r"\+54([1-9]\d{9})")
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")


def person_key(number: str) -> str:
    """The one key of the person behind ``number`` (``+`` and digits, punctuation allowed);
    other numbers come back without their punctuation, unchanged; a BSUID as it is."""
    if bsuid(number) is not None:
        return number
    cleaned = _PUNCTUATION.sub("", number)
    if match := _BR_OLD_MOBILE.fullmatch(cleaned):
        return f"+55{match[1]}9{match[2]}"
    if match := _MX_OLD_MOBILE.fullmatch(cleaned):
        return f"+52{match[1]}"
    if match := _AR_WITHOUT_9.fullmatch(cleaned):
        return f"+549{match[1]}"
    return cleaned


def bsuid(value: object) -> str | None:
    """``value`` when it is a well-formed BSUID, else None."""
    if isinstance(value, str) and _BSUID.fullmatch(value):
        return value
    return None


__all__ = ["bsuid", "person_key"]
