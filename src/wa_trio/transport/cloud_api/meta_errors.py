"""Meta's Cloud API error answers -> our codes and retry classes (pure: the one table).

Meta asks clients to act on ``error.code`` (not the HTTP status or the deprecated subcode);
each documented code we act on maps to one ``Rule``: our code (dead-letter header, metric
label), whether a retry can help, and whether the whole account must stop (an expired token
would otherwise dead-letter every job: the worker stops taking jobs and /healthz turns red).
Codes not in the table fall back on the HTTP status: 5xx and 429 transient, other 4xx
permanent (``cloud_api_rejected``). docs/cloud-api.md shows the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Rule:
    code: str  # ours
    transient: bool
    stops_account: bool = False  # the account cannot send at all until an operator acts
    meaning: str = ""


_AUTH = Rule("cloud_token_invalid", True, True, "access token expired, revoked or not allowed")
_RATE = Rule("cloud_rate_limited", True, False, "a rate limit; retried after the hint")

#: Meta ``error.code`` -> rule. Sources: Meta's Cloud API error-code reference.
TABLE: Mapping[int, Rule] = {
    # authorization: the token, not the job
    0: _AUTH,
    190: _AUTH,
    3: Rule("cloud_permission_denied", True, True, "the app lacks a permission"),
    10: Rule("cloud_permission_denied", True, True, "the app lacks a permission"),
    **{
        code: Rule("cloud_permission_denied", True, True, "the app lacks a permission")
        for code in range(200, 300)
    },
    # throttling: wait and try again
    4: _RATE,
    80007: _RATE,
    130429: _RATE,
    131048: Rule("cloud_rate_limited", True, False, "spam rate limit: quality too low"),
    131056: Rule("cloud_rate_limited", True, False, "too many messages to this one recipient"),
    # integrity: the account is restricted
    368: Rule("cloud_account_restricted", True, True, "blocked for a policy violation"),
    131031: Rule("cloud_account_restricted", True, True, "the business account is locked"),
    131042: Rule("cloud_account_restricted", True, True, "a payment problem"),
    133010: Rule("cloud_account_restricted", True, True, "the phone number is not registered"),
    # the job, for good
    131047: Rule(
        "outside_customer_window",
        False,
        False,
        "more than 24 hours since the customer last wrote: send an approved template",
    ),
    131026: Rule("undeliverable", False, False, "the recipient cannot receive this message"),
    131049: Rule(
        "marketing_limited",
        True,
        False,
        "Meta held this marketing message back for the user (per-user marketing limit)",
    ),
    131050: Rule(
        "opted_out",
        False,
        False,
        "the user stopped marketing messages from this business: opted out, never retried",
    ),
    131021: Rule("invalid_parameter", False, False, "the recipient is the sender"),
    131030: Rule("undeliverable", False, False, "the recipient is not in the test allow-list"),
    100: Rule("invalid_parameter", False, False, "an invalid parameter"),
    131008: Rule("invalid_parameter", False, False, "a required parameter is missing"),
    131009: Rule("invalid_parameter", False, False, "a parameter value is invalid"),
    131051: Rule("invalid_parameter", False, False, "unsupported message type"),
    130472: Rule("undeliverable", False, False, "the recipient is in a Meta experiment"),
    130497: Rule("undeliverable", False, False, "the account may not message this country"),
    132000: Rule("cloud_template_rejected", False, False, "template parameter count mismatch"),
    132001: Rule("cloud_template_rejected", False, False, "template does not exist"),
    132005: Rule("cloud_template_rejected", False, False, "translated text too long"),
    132007: Rule("cloud_template_rejected", False, False, "template format policy violated"),
    132012: Rule("cloud_template_rejected", False, False, "template parameter format mismatch"),
    132015: Rule("cloud_template_rejected", False, False, "template is paused"),
    132016: Rule("cloud_template_rejected", False, False, "template is disabled"),
    # Meta's side: try again
    1: Rule("cloud_api_unavailable", True, False, "unknown API error"),
    2: Rule("cloud_api_unavailable", True, False, "API service temporarily unavailable"),
    131000: Rule("cloud_api_unavailable", True, False, "something went wrong"),
    131016: Rule("cloud_api_unavailable", True, False, "service overloaded"),
}

#: every code this module can give (README and docs list them)
#: 131049, Meta's per-user marketing limit ("healthy ecosystem"): a later try may go through; a
#: day later (Meta's error codes page), through the wait queues, bounded by the job's deadline
MARKETING_LIMIT_CODE = 131049
MARKETING_LIMIT_REST = 86400.0

CODES = frozenset(
    {rule.code for rule in TABLE.values()} | {"cloud_api_unavailable", "cloud_api_rejected"}
)


@attrs.frozen
class Failure:
    """A non-success answer, classified."""

    rule: Rule
    meta_code: int | None
    detail: str  # Meta's message/details, bounded (no message text of ours is in it)
    retry_after: float | None  # seconds to wait, from Retry-After or Meta's usage header


def meta_error(payload: Any) -> tuple[int | None, str]:
    """``(error.code, detail)`` of a Graph API error body (None, "" when it has none)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    detail = str(details or error.get("message") or "")[:300]
    return (code if isinstance(code, int) and not isinstance(code, bool) else None), detail


def classify(
    status: int,
    payload: Any,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> Failure:
    """The rule for a non-2xx answer (``headers`` lower-case, as httpx gives them)."""
    meta_code, detail = meta_error(payload)
    rule = TABLE.get(meta_code) if meta_code is not None else None
    if rule is None:
        if status >= 500:
            rule = Rule("cloud_api_unavailable", True, False, f"HTTP {status}")
        elif status == 429:
            rule = _RATE
        elif status in {401}:
            rule = _AUTH
        else:
            rule = Rule("cloud_api_rejected", False, False, f"HTTP {status}")
    hint = retry_after
    if meta_code == MARKETING_LIMIT_CODE:  # Meta: not permanent, try again in a day
        hint = max(hint or 0.0, MARKETING_LIMIT_REST)
    if rule.transient and hint is None and headers is not None:
        hint = usage_hint(headers.get("x-business-use-case-usage"))
    return Failure(rule, meta_code, detail or f"HTTP {status}", hint)


def usage_hint(header: str | None) -> float | None:
    """Seconds until access is regained, from ``X-Business-Use-Case-Usage`` (its
    ``estimated_time_to_regain_access`` is in minutes); None when absent or unreadable."""
    if not header or len(header) > 8192:
        return None
    try:
        usage = json.loads(header)
    except ValueError:
        return None
    minutes: list[float] = []
    if isinstance(usage, dict):
        for entries in usage.values():
            for entry in entries if isinstance(entries, list) else []:
                value = (
                    entry.get("estimated_time_to_regain_access")
                    if isinstance(entry, dict)
                    else None
                )
                if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                    minutes.append(float(value))
    return max(minutes) * 60.0 if minutes else None


__all__ = [
    "CODES",
    "MARKETING_LIMIT_CODE",
    "MARKETING_LIMIT_REST",
    "TABLE",
    "Failure",
    "Rule",
    "classify",
    "meta_error",
    "usage_hint",
]
