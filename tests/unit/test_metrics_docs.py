"""Every metric the worker exposes is documented in docs/health-and-metrics.md."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from wa_trio.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "health-and-metrics.md"


def test_every_exposed_metric_is_in_the_docs_table() -> None:
    exposition = Metrics("whatsapp.queue", "whatsapp.queue.dlq").exposition().decode()
    names = {family.name for family in text_string_to_metric_families(exposition)}
    doc = DOC.read_text()
    # the parser names counters without _total and info metrics without _info
    documented = {
        name
        for name in names
        if any(f"`{name}{suffix}`" in doc for suffix in ("", "_total", "_info"))
    }
    assert len(names) >= 15
    assert names - documented == set()
