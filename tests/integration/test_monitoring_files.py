"""The monitoring files we ship (issue 31): deploy/prometheus/alerts.yaml is valid and its unit
tests pass under promtool (Debian's ``prometheus`` package), and every metric the alert rules and
deploy/grafana/wa-trio.json name is one a live worker exports on /metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DeleteAfter, StartWorker
from tests.helpers import require_tool, wait_for
from wa_trio.config.settings import Settings

DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "wa-trio.json"

#: what PromQL adds to a metric name: the selectors' and the groupings' insides
_BRACES = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OURS = re.compile(r"\b((?:worker|queue|whatsapp|wa_trio|amqp)_[a-z0-9_]+)\b")


def named_metrics(expr: str) -> set[str]:
    """The series names of ours an expression reads (templating variables and labels removed)."""
    bare = _GROUPING.sub(" ", _BRACES.sub(" ", expr))
    return set(_OURS.findall(bare))


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    def walk(panels: list[dict[str, object]]) -> list[str]:
        found: list[str] = []
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                found.append(target["expr"])
            found += walk(panel.get("panels", []))  # type: ignore[arg-type]
        return found

    dashboard = json.loads(DASHBOARD.read_text())
    return walk(dashboard["panels"])


def exported(exposition: str) -> set[str]:
    """Every series name a scrape may carry: each family's samples, and the sample names of a
    family that has none yet (a labelled counter before its first increment)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count"],
        }.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_expression_reader_finds_names_and_skips_labels() -> None:
    expr = 'sum by (queue_name) (rate(worker_jobs_failed_total{queue_name="x", account=~"$a"}[5m]))'
    assert named_metrics(expr) == {"worker_jobs_failed_total"}
    assert named_metrics("up == 0") == set()


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = require_tool("promtool", how="apt install prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    tests = yaml.safe_load((RULES.parent / "alerts.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert alerts == tested


async def test_every_metric_the_rules_and_dashboard_name_is_exported_by_a_live_worker(
    delete_after: DeleteAfter, settings: Settings, start_worker: StartWorker
) -> None:
    delete_after(settings)
    worker = await start_worker(settings)
    await wait_for(lambda: worker.monitor.statistics().up, what="monitor up")
    async with httpx.AsyncClient(base_url=worker.http_url) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    names = exported(answer.text)
    expressions = rule_expressions() + dashboard_expressions()
    assert len(expressions) > 30
    used = set().union(*(named_metrics(expr) for expr in expressions))
    assert len(used) > 25
    assert sorted(used - names) == []
    worker.stop()


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_each_dashboard_expression_filters_by_the_dashboard_variables(expr: str) -> None:
    assert 'instance=~"$instance"' in expr and 'account=~"$account"' in expr
