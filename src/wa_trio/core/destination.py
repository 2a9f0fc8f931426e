"""A phone destination in any form publishers write it, to E.164 (pure).

Accepted: ``+`` and the number with any spaces, dashes, dots and parentheses (``+55 (11)
99999-9999``); WhatsApp's own JIDs as WAHA and GOWA users send them
(``5511999999999@s.whatsapp.net``, the older ``@c.us``: the digits are the international
number); and bare international digits
(``5511999999999``) when phonenumbers finds one valid number in them. Bare digits that are not
a valid international number (a national number without its country code, a trunk ``0``) are
refused as ambiguous: which country is meant cannot be told.

The raw text is bounded before any work, and only the cleaned form (at most 16 characters)
reaches the caches: a publisher cannot grow the worker's memory with padded destinations.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

MAX_DESTINATION_CHARS = 64  # "+" and 15 digits with generous punctuation; longer is garbage
_STRIP = re.compile(r"[\s\-.()]")
_E164 = re.compile(r"\+\d{8,15}")
_JID = re.compile(r"(\d{8,15})@(?:s\.whatsapp\.net|c\.us)")
_DIGITS = re.compile(r"\d{8,15}")


class DestinationProblem(ValueError):
    """Why the text is no phone destination (the envelope makes it ``invalid_destination``)."""


def e164(raw: str) -> str:
    """The destination in E.164 form. Raises DestinationProblem."""
    if len(raw) > MAX_DESTINATION_CHARS:
        raise DestinationProblem(f"destination is longer than {MAX_DESTINATION_CHARS} characters")
    jid = _JID.fullmatch(raw.strip())
    if jid is not None:
        return possible("+" + jid[1])
    cleaned = _STRIP.sub("", raw)
    if _DIGITS.fullmatch(cleaned):
        return bare(cleaned)
    if not _E164.fullmatch(cleaned):
        raise DestinationProblem(
            "destination must be '+' then 8-15 digits (country code first, e.g. +44 20 7946 0000)"
        )
    return possible(cleaned)


@functools.lru_cache(maxsize=4096)
def possible(cleaned: str) -> str:
    """phonenumbers' verdict on an E.164-shaped string (cached, bounded: phonenumbers is the
    costliest step of validation and a worker sends to the same numbers again and again;
    rejections raise and are not cached)."""
    try:
        number = phonenumbers.parse(cleaned, None)
    except phonenumbers.NumberParseException:
        raise DestinationProblem("destination has no valid country calling code") from None
    if not phonenumbers.is_possible_number(number):
        raise DestinationProblem("destination is not a possible number for its country")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


@functools.lru_cache(maxsize=4096)
def bare(digits: str) -> str:
    """Digits without ``+``: the international number they spell, if it is a valid one."""
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise DestinationProblem(
            "destination has no '+' and its digits are no valid international number (a "
            "national number? which country is meant cannot be told): write '+', the country "
            "code, then the number"
        )
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


__all__ = ["MAX_DESTINATION_CHARS", "DestinationProblem", "bare", "e164", "possible"]
