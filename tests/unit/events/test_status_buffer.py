"""The status-event buffer without a broker: bounded, oldest dropped first, counted."""

from __future__ import annotations

from collections.abc import Callable

from wa_trio.config.settings import Settings
from wa_trio.events import status
from wa_trio.events.status import StatusPublisher, make_event
from wa_trio.metrics import Metrics


def _publisher(env: dict[str, str]) -> tuple[StatusPublisher, Metrics]:
    settings = Settings.from_env(env)
    metrics = Metrics(settings.queue_name, settings.dlq_name)
    return StatusPublisher(settings, metrics, ledger=None), metrics


def test_full_buffer_drops_the_oldest_and_counts_it(
    make_env: Callable[..., dict[str, str]],
) -> None:
    publisher, metrics = _publisher(make_env(WHATSAPP_STATUS_ROUTING_KEY="whatsapp.status"))
    for i in range(status.BUFFER + 3):
        publisher.emit(make_event("sent", job_key=f"k{i}", user_id=None))
    registry = metrics.registry
    assert registry.get_sample_value("whatsapp_status_events_pending") == status.BUFFER
    assert registry.get_sample_value("whatsapp_status_events_dropped_total") == 3
    assert publisher.statistics().oldest_job_key == "k3"  # the three oldest went


def test_disabled_publisher_buffers_nothing(make_env: Callable[..., dict[str, str]]) -> None:
    publisher, metrics = _publisher(make_env(WHATSAPP_STATUS_ROUTING_KEY=""))
    publisher.emit(make_event("sent", job_key="k", user_id=None))
    assert metrics.registry.get_sample_value("whatsapp_status_events_pending") == 0
    assert metrics.registry.get_sample_value("whatsapp_status_events_dropped_total") == 0
