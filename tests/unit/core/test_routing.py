"""Which account sends a pool job (issue 16): pinned, unknown, rendezvous over the connected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.routing import Route, recipient_key, rendezvous, route

ACCOUNTS = ("a", "b", "c")


def test_a_named_account_wins_and_an_unknown_one_is_refused() -> None:
    assert route(named="b", destination="+5511999999999", accounts=ACCOUNTS, connected=["a"]) == (
        Route("b")
    )
    assert route(
        named="z", destination="+5511999999999", accounts=ACCOUNTS, connected=ACCOUNTS
    ) == (Route(None, "unknown_account"))
    assert route(named=None, destination="+5511999999999", accounts=ACCOUNTS, connected=[]) == (
        Route(None)  # nobody connected: wait
    )


def test_a_recipient_keeps_its_account_whatever_the_formatting() -> None:
    forms = ["+55 11 99999-0001", "+5511999990001", "+55 (11) 99999.0001"]
    assert len({recipient_key(form) for form in forms}) == 1
    chosen = {rendezvous(recipient_key(form), ACCOUNTS) for form in forms}
    assert len(chosen) == 1
    assert recipient_key("120363025246125486@g.us") == "120363025246125486@g.us"


def test_the_spread_and_what_moves_when_an_account_goes_down() -> None:
    recipients = [f"55119{n:08d}" for n in range(300)]
    owner = {r: rendezvous(r, ACCOUNTS) for r in recipients}
    spread = Counter(owner.values())
    assert set(spread) == set(ACCOUNTS)
    assert max(spread.values()) <= 1.2 * min(spread.values())  # within 20 % of each other
    without_b = {r: rendezvous(r, ("a", "c")) for r in recipients}
    moved = [r for r in recipients if owner[r] != without_b[r]]
    assert moved and all(owner[r] == "b" for r in moved)  # only b's recipients move
    assert {rendezvous(r, ACCOUNTS) for r in moved} == {"b"}  # and come back when b returns


def test_account_settings(make_env: Callable[..., dict[str, str]]) -> None:
    single = Settings.from_env(make_env())
    assert single.accounts == ("default",) and single.for_account("default") is single
    many = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="default,sales-2"))
    default, sales = many.for_account("default"), many.for_account("sales-2")
    assert default.session_path == many.session_path  # existing volumes keep working
    assert sales.session_path == many.session_path / "accounts" / "sales-2"
    assert sales.queue_name == f"{many.queue_name}.sales-2"
    assert sales.routing_key == f"{many.routing_key}.sales-2"
    assert sales.dlq_name == many.dlq_name and sales.exchange == many.exchange
    for bad in ("Sales", "a,a", "", "x" * 33, "a b"):
        with pytest.raises(ConfigError):
            Settings.from_env(make_env(WHATSAPP_ACCOUNTS=bad))
    with pytest.raises(ConfigError) as fanout:
        Settings.from_env(make_env(WHATSAPP_ACCOUNTS="a,b", WHATSAPP_EXCHANGE_TYPE="fanout"))
    assert "WHATSAPP_EXCHANGE_TYPE" in str(fanout.value)
