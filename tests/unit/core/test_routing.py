"""Which account sends a pool job (issue 16): pinned, unknown, rendezvous over the connected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.routing import (
    Needs,
    Route,
    can_send,
    needs_of,
    pinned_key,
    recipient_key,
    rendezvous,
    route,
)

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


CLOUD = {
    "WHATSAPP_CLOUD_PHONE_NUMBER_ID": "1234",
    "WHATSAPP_CLOUD_ACCESS_TOKEN": "token-0123456789",
    "WHATSAPP_CLOUD_APP_SECRET": "secret-0123456789",
    "WHATSAPP_CLOUD_VERIFY_TOKEN": "verify-0123456789",
}


def test_each_account_may_name_its_transport(make_env: Callable[..., dict[str, str]]) -> None:
    both = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="shop:neonize,api:cloud-api", **CLOUD))
    assert both.accounts == ("shop", "api") and both.cloud_account == "api"
    assert both.for_account("shop").transport == "neonize"
    assert both.for_account("api").transport == "cloud-api"
    assert both.transports == {"neonize", "cloud-api"}
    plain = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="a,b:cloud-api", **CLOUD))
    assert plain.for_account("a").transport == plain.transport == "dry-run"  # the process's
    one = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="api:cloud-api", **CLOUD))
    assert one.transport == "cloud-api" and one.for_account("api") is one
    for value in ("a:smtp", "a:", "a:cloud-api,b:cloud-api", "a:neonize,a:cloud-api"):
        with pytest.raises(ConfigError) as error:  # no such transport; one number's settings
            Settings.from_env(make_env(WHATSAPP_ACCOUNTS=value, **CLOUD))
        assert "WHATSAPP_ACCOUNTS" in str(error.value)
    mixed = Settings.from_env(make_env(WHATSAPP_ACCOUNTS="a:neonize,b"))
    assert mixed.transports == {"neonize", "dry-run"} and mixed.cloud_account is None
    with pytest.raises(ConfigError) as missing:  # the Cloud API's settings, all named at once
        Settings.from_env(make_env(WHATSAPP_ACCOUNTS="a,b:cloud-api"))
    assert "WHATSAPP_CLOUD_ACCESS_TOKEN" in str(missing.value)


def test_the_fallback_needs_both_kinds_of_account(make_env: Callable[..., dict[str, str]]) -> None:
    accounts = "shop:neonize,api:cloud-api"
    fine = make_env(WHATSAPP_ACCOUNTS=accounts, WHATSAPP_FALLBACK="cloud-api", **CLOUD)
    assert Settings.from_env(fine).fallback == "cloud-api"
    for accounts in ("shop:neonize", "shop,other", "api:cloud-api", "a:dry-run,api:cloud-api"):
        env = make_env(WHATSAPP_ACCOUNTS=accounts, WHATSAPP_FALLBACK="cloud-api", **CLOUD)
        with pytest.raises(ConfigError) as error:
            Settings.from_env(env)
        assert "WHATSAPP_FALLBACK" in str(error.value)


TEMPLATE = {"name": "t", "language": "en"}


@pytest.mark.parametrize(
    ("job", "needs"),
    [
        ({"text_message": "hi"}, Needs()),
        ({"cloud_template": TEMPLATE}, Needs(cloud_only=True, free_form=False)),
        ({"cloud_template": TEMPLATE, "text_message": "hi"}, Needs(free_form=False)),
        ({"cloud_template": TEMPLATE, "template": "welcome"}, Needs(free_form=False)),
        ({"media": {"kind": "image"}}, Needs()),
        ([1, 2], Needs()),  # unreadable: validation gives the reason
        ("text", Needs()),
    ],
)
def test_what_a_job_needs(job: object, needs: Needs) -> None:
    assert needs_of(job) == needs


ANY, ALONE, TEXT = Needs(free_form=False), Needs(cloud_only=True, free_form=False), Needs()


@pytest.mark.parametrize(
    ("needs", "cloud_templates", "windowed", "window_open", "can"),
    [
        (TEXT, False, False, False, True),  # neonize sends text
        (ALONE, False, False, False, False),  # ... never a Cloud API template alone
        (ANY, False, False, False, True),  # ... the text of a job that has both
        (ALONE, True, True, False, True),  # the Cloud API sends a template at any time
        (ANY, True, True, False, True),
        (TEXT, True, True, False, False),  # ... free text only inside the window
        (TEXT, True, True, True, True),
        (TEXT, True, False, False, True),  # dry-run: anything
        (ALONE, True, False, False, True),
    ],
)
def test_which_account_can_send_a_job(
    needs: Needs, cloud_templates: bool, windowed: bool, window_open: bool, can: bool
) -> None:
    assert (
        can_send(needs, cloud_templates=cloud_templates, windowed=windowed, window_open=window_open)
        is can
    )


def test_a_job_no_account_could_ever_send_is_refused_and_one_waits_for_a_capable_one() -> None:
    refused = route(named=None, destination="+1", accounts=ACCOUNTS, connected=[], capable=[])
    assert refused == Route(None, "cloud_template_unsupported")
    waits = route(named=None, destination="+1", accounts=ACCOUNTS, connected=[], capable=["c"])
    assert waits == Route(None)
    goes = route(named=None, destination="+1", accounts=ACCOUNTS, connected=["c"], capable=["c"])
    assert goes == Route("c")


def test_the_key_that_pins_another_account() -> None:
    assert pinned_key("whatsapp.send.shop", "shop", "api") == "whatsapp.send.api"
    assert pinned_key("shop.shop", "shop", "api") == "shop.api"
