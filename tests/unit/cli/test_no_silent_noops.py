"""Issue 30: commands that did nothing and said nothing now say what is wrong and exit 2 (or
refuse before touching anything): ``templates list`` with no directory, ``optout list`` on a
mistyped session path, ``login`` with a transport that links no device, /login for another
account, a refused opt-out."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from wa_trio.bus.monitor import BrokerMonitor
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.pipeline.consumer import PipelineStatistics
from wa_trio.transport.dry_run import DryRunTransport
from wa_trio.web.app import create_app

TOKEN = "noop-token-0123456789"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WHATSAPP_SESSION_PATH", str(tmp_path / "session"))
    monkeypatch.delenv("WHATSAPP_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("WHATSAPP_STORE", raising=False)


def test_templates_without_a_directory_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "list"]) == 2
    assert "WHATSAPP_TEMPLATES_DIR is unset" in capsys.readouterr().err


def test_an_optout_list_on_a_missing_folder_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["optout", "list"]) == 2
    assert "no session folder at" in capsys.readouterr().err
    assert not (tmp_path / "session").exists()
    assert main(["optout", "remove", "+5511999999999"]) == 2
    assert not (tmp_path / "session").exists()
    assert main(["optout", "add", "+5511999999999"]) == 0  # adding may start the folder
    assert main(["optout", "list"]) == 0


@pytest.mark.parametrize("transport", ["dry-run", "cloud-api"])
def test_login_with_a_transport_that_links_nothing_says_so(
    transport: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WHATSAPP_TRANSPORT", transport)
    for name in ("PHONE_NUMBER_ID", "ACCESS_TOKEN", "APP_SECRET", "VERIFY_TOKEN"):
        monkeypatch.setenv(f"WHATSAPP_CLOUD_{name}", "1234567890123456789")
    assert main(["login"]) == 2
    assert "links no device" in capsys.readouterr().err


def test_a_refused_optout_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "session"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # readable by others: refused, as at start
    assert main(["optout", "add", "+5511999999999"]) == 2
    assert "readable by other users" in capsys.readouterr().err


def test_login_of_another_account_is_404_on_a_one_account_worker(tmp_path: Path) -> None:
    settings = Settings.from_env({"WHATSAPP_SESSION_PATH": str(tmp_path)})
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    app = create_app(
        consumer=_Down(),
        monitor=BrokerMonitor(settings, metrics),
        transport=DryRunTransport(None, Redactor(True)),
        metrics=metrics,
        admin_token=TOKEN,
        account="default",
    )

    async def main_() -> tuple[int, int, int]:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        other = await client.get("/login?account=sales", headers=auth)
        mine = await client.get("/login?account=default", headers=auth)
        plain = await client.get("/login", headers=auth)
        return other.status_code, mine.status_code, plain.status_code

    assert trio.run(main_) == (404, 200, 200)


class _Down:
    connected = False

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(connected=False, connections=0, ledger_problem=None)
