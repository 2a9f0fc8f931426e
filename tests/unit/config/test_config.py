from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wa_trio.bus.address import BrokerAddress, NodeOrder
from wa_trio.config.describe import markdown_table
from wa_trio.config.grammar import broker_nodes, parse_duration
from wa_trio.config.redact import SECRET_VARS, redact_url
from wa_trio.config.settings import (
    FIELDS,
    ConfigError,
    Settings,
)

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_are_the_original_workers() -> None:
    s = Settings.from_env({})
    assert s.rabbitmq_url == "amqp://woragis:woragis@rabbitmq:5672/woragis"
    assert (s.queue_name, s.exchange, s.routing_key) == (
        "whatsapp.queue",
        "woragis.notifications",
        "whatsapp.send",
    )
    assert s.prefetch_count == 1
    assert s.session_db == Path("/app/session/whatsapp.db")
    assert s.env == "development" and not s.production
    assert s.log_to_file is False and s.log_dir == Path("logs")
    assert s.http_port == 8080
    assert s.transport == "neonize"
    assert s.dry_run_file is None
    assert s.dlx == "woragis.notifications.dlx"
    assert s.dlq_name == "whatsapp.queue.dlq"
    assert s.exchange_type == "topic"
    assert s.content_filter is True
    assert s.shutdown_grace == 10.0


def test_url_overrides_parts() -> None:
    s = Settings.from_env(
        {
            "RABBITMQ_URL": "amqps://bob:s%40cret@mq.example:5671/prod%2Fa",
            "RABBITMQ_HOST": "ignored",
        }
    )
    assert (s.rabbitmq_user, s.rabbitmq_password, s.rabbitmq_host) == (
        "bob",
        "s@cret",
        "mq.example",
    )
    assert (s.rabbitmq_port, s.rabbitmq_vhost) == (5671, "prod/a")


def test_url_without_vhost_means_default_vhost() -> None:
    assert Settings.from_env({"RABBITMQ_URL": "amqp://localhost"}).rabbitmq_vhost == "/"


def test_derived_dlx_and_dlq_follow_names() -> None:
    s = Settings.from_env({"WHATSAPP_QUEUE_NAME": "q1", "WHATSAPP_EXCHANGE": "x1"})
    assert (s.dlx, s.dlq_name) == ("x1.dlx", "q1.dlq")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HTTP_PORT", "abc", "a TCP port"),
        ("RABBITMQ_PORT", "70000", "a TCP port"),
        ("WHATSAPP_PREFETCH_COUNT", "0", "an integer from 1 to 65535"),
        ("WHATSAPP_PREFETCH_COUNT", "65536", "an integer from 1 to 65535"),
        ("WHATSAPP_TRANSPORT", "carrier-pigeon", "neonize, cloud-api or dry-run"),
        ("RABBITMQ_URL", "http://user:pw@host/", "an amqp:// or amqps:// URL"),
        ("WHATSAPP_CONTENT_FILTER", "maybe", "on or off"),
        ("ENV", "staging", "development or production"),
        ("WHATSAPP_SHUTDOWN_GRACE", "soon", "a duration"),
        ("WHATSAPP_PROXY", "ftp://x", "an http://"),
        ("LOG_TO_FILE", "perhaps", "true or false"),
    ],
)
def test_bad_value_is_one_line_naming_variable_and_expectation(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert "\n" not in message
    assert variable in message
    assert expected in message
    assert info.value.variable == variable


def test_password_never_in_error_or_repr() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RABBITMQ_URL": "http://user:hunter2@host/"})
    assert "hunter2" not in str(info.value)
    s = Settings.from_env(
        {
            "RABBITMQ_URL": "amqp://user:hunter2@host/",
            "WHATSAPP_PROXY": "socks5://p:hunter3@127.0.0.1:1",
        }
    )
    assert "hunter2" not in repr(s) and "hunter3" not in repr(s)
    shown = s.as_redacted_dict()
    assert shown["RABBITMQ_URL"] == "amqp://user:***@host/"
    assert "hunter3" not in shown["WHATSAPP_PROXY"]
    assert s.redacted_url == "amqp://user:***@host/"


def test_password_part_is_redacted_in_check_output() -> None:
    shown = Settings.from_env({"RABBITMQ_PASSWORD": "hunter2"}).as_redacted_dict()
    assert "hunter2" not in str(shown)
    assert shown["RABBITMQ_PASSWORD"] == "***"


def test_check_shows_each_account_with_its_transport() -> None:
    many = Settings.from_env({"WHATSAPP_ACCOUNTS": "shop,bot:dry-run"}).as_redacted_dict()
    assert many["WHATSAPP_ACCOUNTS"] == "shop:neonize,bot:dry-run"
    one = Settings.from_env({}).as_redacted_dict()
    assert one["WHATSAPP_ACCOUNTS"] == "default:neonize"  # reads back as it is written


def test_redact_url_leaves_passwordless_urls() -> None:
    assert redact_url("amqp://host:5672/") == "amqp://host:5672/"


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5), ("2m", 120), ("1.5", 1.5), ("250ms", 0.25), ("7d", 604800)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_readme_configuration_table_matches_fields() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python tools/update_readme_config.py"
    assert len(markdown_table().splitlines()) == len(FIELDS) + 2
    assert markdown_table() in (ROOT / "docs" / "configuration.md").read_text()


def test_no_secret_in_the_repr_of_the_settings() -> None:
    """Secrecy declared once (config/redact.py): ``repr(settings)`` shows no password, token
    or secret, also inside a URL (the status webhook's URL once leaked its password here)."""
    env = {
        "RABBITMQ_URL": "amqp://user:rabbit-pw-1@host:5672/v",
        "WHATSAPP_STATUS_WEBHOOK_URL": "https://hook:webhook-pw-2@example.com/in",
        "WHATSAPP_STATUS_WEBHOOK_SECRET": "webhook-secret-3" * 2,
        "WHATSAPP_PROXY": "http://proxy:proxy-pw-4@127.0.0.1:3128",
        "WHATSAPP_STORE": "postgresql://pg:store-pw-5@127.0.0.1/db",
        "WHATSAPP_ADMIN_TOKEN": "admin-token-6-xxxxxxxxxxxxxxx",
    }
    shown = repr(Settings.from_env(env))
    for secret in ("rabbit-pw-1", "webhook-pw-2", "webhook-secret-3", "proxy-pw-4"):
        assert secret not in shown
    assert "store-pw-5" not in shown and "admin-token-6" not in shown
    assert "hook:***@example.com" in shown  # redacted, still recognisable
    assert {"RABBITMQ_PASSWORD", "WHATSAPP_STATUS_WEBHOOK_URL"} <= SECRET_VARS


def test_a_bare_run_outside_a_container_says_which_image_defaults_it_uses() -> None:
    """Issue 30: host `rabbitmq`, user `woragis`, /app/session are the image's; outside it a
    bare run names them in its first line and never makes /app on the host."""
    from wa_trio.config.describe import outside_image_defaults

    bare = Settings.from_env({})
    line, refusal = outside_image_defaults(bare, {}, in_container=False)
    assert line is not None and "broker rabbitmq:5672 (user woragis, vhost woragis)" in line
    assert "session folder /app/session" in line
    assert refusal is not None and "does not make /app" in refusal
    assert outside_image_defaults(bare, {}, in_container=True) == (None, None)
    chosen = {"RABBITMQ_URL": "amqp://guest:guest@localhost:5672/", "WHATSAPP_SESSION_PATH": "s"}
    assert outside_image_defaults(Settings.from_env(chosen), chosen, in_container=False) == (
        None,
        None,
    )
    only_broker = {"WHATSAPP_SESSION_PATH": "./session"}
    line, refusal = outside_image_defaults(
        Settings.from_env(only_broker), only_broker, in_container=False
    )
    assert line is not None and "session folder" not in line and refusal is None


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", (("127.0.0.1", 5672),)),
        ("amqp://u:p@n1:5672,n2:5673,n3/vh", (("n1", 5672), ("n2", 5673), ("n3", 5672))),
        ("amqps://u:p@n1,n2/vh", (("n1", 5671), ("n2", 5671))),
        ("amqp://u:p@[::1]:5674,n2/vh", (("::1", 5674), ("n2", 5672))),
        ("amqp://u:p%2C@n1,n2/vh", (("n1", 5672), ("n2", 5672))),  # a comma in the password
    ],
)
def test_rabbitmq_url_may_list_the_nodes_of_a_cluster(
    make_env: Callable[..., dict[str, str]], url: str, nodes: tuple[tuple[str, int], ...]
) -> None:
    settings = Settings.from_env(make_env(RABBITMQ_URL=url))
    assert broker_nodes(url) == nodes
    assert BrokerAddress.from_settings(settings).all_nodes == nodes
    assert (settings.rabbitmq_host, settings.rabbitmq_port) == nodes[0]
    assert settings.rabbitmq_user in {"guest", "u"}
    assert "p" not in settings.redacted_url.split("@")[0].split("//")[1].split(":")[-1]


@pytest.mark.parametrize(
    "url", ["amqp://u:p@n1,,n2/vh", "amqp://u:p@n1:99999,n2/vh", "http://n1,n2/", "amqp://"]
)
def test_a_bad_node_list_is_one_line(make_env: Callable[..., dict[str, str]], url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(make_env(RABBITMQ_URL=url))
    assert "RABBITMQ_URL" in str(caught.value) and "\n" not in str(caught.value)


def test_the_next_connect_starts_at_the_node_after_a_lost_one() -> None:
    address = BrokerAddress("n1", 5672, "u", "p", "/", nodes=(("n1", 5672), ("n2", 5672)))
    order = NodeOrder()
    assert order.order(address) == [("n1", 5672), ("n2", 5672)]
    order.answered(address, address.at(("n2", 5672)))  # n1 did not answer, n2 did
    assert order.order(address) == [("n2", 5672), ("n1", 5672)]
    order.lost(address)  # n2's connection was lost: n1 first next time
    assert order.order(address) == [("n1", 5672), ("n2", 5672)]
