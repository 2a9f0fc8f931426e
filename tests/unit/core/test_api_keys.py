"""WHATSAPP_API_KEYS as a table: the forms a key is given in, what is refused, constant-time
look-up by hash, account limits, the per-client rate (core/api_keys.py)."""

from __future__ import annotations

import pytest

from wa_trio.core.api_keys import RateGate, digest, find_key, parse_api_keys

PLAIN = "k" * 24
HASHED = "h" * 30


def test_the_forms_of_a_key() -> None:
    keys = parse_api_keys(f"billing:{PLAIN}, cron:sha256={digest(HASHED).hex()}@shop+api")
    assert [k.client for k in keys] == ["billing", "cron"]
    assert keys[0].digest == digest(PLAIN) and PLAIN not in repr(keys)
    assert keys[1].accounts == frozenset({"shop", "api"})
    assert parse_api_keys("") == ()


@pytest.mark.parametrize(
    "value",
    [
        "billing",  # no key
        "billing:short",  # under 24 characters
        f"Billing:{PLAIN}",  # client names are lower case
        f"a:{PLAIN},a:{PLAIN}x",  # a client twice
        "a:sha256=abc",  # not 64 hex digits
        f"a:{PLAIN}@",  # an empty account list
        f"a:{PLAIN}@Shop",  # account names as WHATSAPP_ACCOUNTS spells them
        f"a:{PLAIN} with space",
    ],
)
def test_what_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_api_keys(value)


@pytest.mark.parametrize(
    ("presented", "client"),
    [(PLAIN, "billing"), (HASHED, "cron"), ("", None), (None, None), (PLAIN + "x", None)],
)
def test_find_key(presented: str | None, client: str | None) -> None:
    keys = parse_api_keys(f"billing:{PLAIN},cron:sha256={digest(HASHED).hex()}@shop")
    found = find_key(keys, presented)
    assert (found.client if found else None) == client


@pytest.mark.parametrize(
    ("accounts", "job_account", "allowed"),
    [(None, None, True), (None, "shop", True), ("shop", "shop", True), ("shop", None, False)],
)
def test_account_limits(accounts: str | None, job_account: str | None, allowed: bool) -> None:
    suffix = f"@{accounts}" if accounts else ""
    [key] = parse_api_keys(f"a:{PLAIN}{suffix}")
    assert key.allows(job_account) is allowed


def test_the_rate_gate_lets_a_second_of_requests_through_then_says_when() -> None:
    gate = RateGate(2.0)
    assert [gate.take("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert gate.take("a", 0.0) == pytest.approx(0.5)
    assert gate.take("b", 0.0) == 0.0  # per client
    assert gate.take("a", 0.5) == 0.0  # a token back after half a second
    assert gate.take("a", 0.5, cost=3) > 0
