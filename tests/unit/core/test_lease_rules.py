"""The lease across replicas, decided without I/O (lease_rules.py) and its settings."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core import lease_rules as rules


def test_the_holder_fences_itself_before_the_server_can_release_its_lock() -> None:
    # a holder cut off from the server stops before anyone else may take the account
    assert rules.SERVER_DROPS_AFTER > rules.FENCED_WITHIN
    # a taker waits out the longest a holder the server dropped may still run
    assert rules.TAKEOVER_GRACE >= rules.FENCED_WITHIN
    # a failover after kill -9 (the lock granted at once to the queued standby): the grace,
    # with room under the 2 s for the worker's start
    assert rules.TAKEOVER_GRACE <= 1.0


@pytest.mark.parametrize(
    ("inherited_from", "silent_for", "grace"),
    [
        (None, None, 0.0),  # a clean hand-off: the holder released after its drain
        (None, 0.1, 0.0),
        ("host:1", None, rules.FENCED_WITHIN),  # unknown: all of it
        ("host:1", 0.0, rules.FENCED_WITHIN),  # killed right after a heartbeat
        ("host:1", 0.25, rules.FENCED_WITHIN - 0.25),  # killed between two
        ("host:1", rules.SERVER_DROPS_AFTER, 0.0),  # cut off: dropped long after it fenced
        ("host:1", -5.0, rules.FENCED_WITHIN),  # a heartbeat "in the future": never more
    ],
)
def test_the_takeover_grace(
    inherited_from: str | None, silent_for: float | None, grace: float
) -> None:
    assert rules.takeover_grace(inherited_from, silent_for) == pytest.approx(grace)


@pytest.mark.parametrize(
    ("silence", "fence"),
    [(0.0, False), (rules.FENCE_AFTER - 0.01, False), (rules.FENCE_AFTER, True)],
)
def test_must_fence_after_fence_after_seconds_of_silence(silence: float, fence: bool) -> None:
    assert rules.must_fence(100.0, 100.0 + silence) is fence


names = st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)


@given(names, names)
def test_each_account_has_a_schema_of_its_own(a: str, b: str) -> None:
    assert (rules.session_schema(a) == rules.session_schema(b)) == (a == b)
    assert len(rules.session_schema(a)) <= 63  # PostgreSQL's identifier limit
    assert rules.session_schema(a).replace("_", "").isalnum()


def test_the_session_url_keeps_the_stores_and_names_the_accounts_schema() -> None:
    url = rules.session_store_url(
        "postgresql://wa:s%40cret@db.example:5433/wa?sslmode=disable&search_path=x", "team-a"
    )
    parts = urlsplit(url)
    assert parts.scheme == "postgres"  # neonize picks whatsmeow's postgres dialect by prefix
    assert parts.netloc == "wa:s%40cret@db.example:5433"
    assert parts.path == "/wa"
    assert parse_qs(parts.query) == {
        "sslmode": ["disable"],
        "search_path": ["wa_trio_session_team_a"],
    }
    leased = rules.session_store_url(url + "&wa_trio.epoch=3", "team-a", epoch=7)
    assert parse_qs(urlsplit(leased).query)["wa_trio.epoch"] == ["7"]  # one, the holder's
    assert "idle_session_timeout" not in leased  # a server that does not know it refuses it
    idle = rules.session_store_url(url + "&idle_session_timeout=9", "team-a", idle_ms=5000)
    assert parse_qs(urlsplit(idle).query)["idle_session_timeout"] == ["5000"]


def test_whatsapp_store_is_sqlite_or_a_postgresql_url() -> None:
    assert Settings.from_env({}).store is None
    assert Settings.from_env({}).session_database.endswith("whatsapp.db")
    url = "postgresql://wa:hunter2hunter2@db:5432/wa"
    settings = Settings.from_env({"WHATSAPP_STORE": url})
    assert settings.store == url
    assert "hunter2" not in settings.as_redacted_dict()["WHATSAPP_STORE"]
    assert Settings.from_env({}).as_redacted_dict()["WHATSAPP_STORE"] == "sqlite"
    assert "hunter2" not in repr(settings)
    for bad in ("mysql://db/wa", "postgresql://db", "postgresql:///wa", "files"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"WHATSAPP_STORE": bad.replace("db", "u:hunter2hunter2@db")})
        assert "WHATSAPP_STORE" in str(caught.value)
        assert "hunter2" not in str(caught.value)


def test_the_account_name_of_a_single_account_is_its_own() -> None:
    assert Settings.from_env({}).account_name == "default"
    assert Settings.from_env({"WHATSAPP_ACCOUNTS": "sales"}).account_name == "sales"
    many = Settings.from_env({"WHATSAPP_ACCOUNTS": "a,b"})
    assert many.for_account("b").account_name == "b"
    store = Settings.from_env({"WHATSAPP_ACCOUNTS": "a,b", "WHATSAPP_STORE": "postgres://h/d"})
    assert "search_path=wa_trio_session_b" in store.for_account("b").session_database
