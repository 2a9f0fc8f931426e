"""A broker that refuses our login or our virtual host (issue 30, DEVELOPERS.md's standard):
``wa-trio run`` says so in one line and exits with 2, never a traceback, never a retry loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.helpers import run_once


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("amqp://guest:not-the-password@127.0.0.1:5672/", "refused the login of user 'guest'"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "refused virtual host"),
    ],
)
async def test_a_refused_login_or_vhost_is_one_line_and_exit_2(
    make_env: Callable[..., dict[str, str]], url: str, said: str
) -> None:
    done = await trio.to_thread.run_sync(run_once, make_env(RABBITMQ_URL=url, HTTP_PORT="0"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("wa-trio: ")]
    assert lines[-1].startswith("wa-trio: the broker at 127.0.0.1:5672 ")
    assert said in lines[-1]
    assert "Traceback" not in done.stderr and "not-the-password" not in done.stderr


async def test_a_broker_that_cannot_be_reached_is_named_redacted(
    make_env: Callable[..., dict[str, str]],
) -> None:
    from tests.conftest import closed_port
    from wa_trio.bus.amqp import BrokerError
    from wa_trio.bus.job_publisher import publish_job
    from wa_trio.config.settings import Settings

    port = closed_port()
    settings = Settings.from_env(make_env(RABBITMQ_URL=f"amqp://guest:s3cret@127.0.0.1:{port}/"))
    with pytest.raises(BrokerError) as caught:
        await publish_job(settings, b"{}")
    assert f"amqp://guest:***@127.0.0.1:{port}/" in str(caught.value)
    assert "s3cret" not in str(caught.value)
