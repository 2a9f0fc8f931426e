"""Publishing jobs from Python (issue 32), for services that speak AMQP: the same code as
``wa-trio send`` (validated with the worker's own rules first, then published with publisher
confirms, the topology declared). Blocking; from trio code, call ``publish_job`` directly.

    from wa_trio.client import publish
    message_id = publish({"user_id": "...", "destination": "+5511999999999",
                          "text_message": "Your code is 123456"}, message_id="order-42")

The settings come from the environment (RABBITMQ_URL, WHATSAPP_EXCHANGE, ...), as the worker
reads them, unless ``settings`` is given.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import trio

from wa_trio.bus.job_publisher import publish_job
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import parse_envelope
from wa_trio.core.templates import TemplateSet


def check_job(settings: Settings, body: bytes, templates: TemplateSet | None = None) -> None:
    """The worker's validation of a job body, as a publisher can run it (the transport's own
    look-ups aside; a template job needs the worker's ``templates``). Raises ValidationError."""
    parse_envelope(
        body,
        templates=templates,
        content_filter=settings.content_filter,
        cloud_templates=settings.transports != {"neonize"},
        media_inline_max=settings.media_inline_max_bytes,
    )


def publish(
    job: dict[str, Any],
    *,
    message_id: str | None = None,
    settings: Settings | None = None,
    validate: bool = True,
) -> str:
    """Publish ``job``; its message id (``message_id``, else a new UUID).

    Raises:
        ValidationError: the job is invalid (its ``code`` is the one the DLQ would carry).
        BrokerError: the broker refused or could not be reached.
    """
    settings = settings or Settings.from_env(os.environ)
    body = json.dumps(job, ensure_ascii=False).encode()
    if validate:
        check_job(settings, body)
    chosen = message_id or str(uuid.uuid4())
    trio.run(publish_job, settings, body, chosen)
    return chosen


__all__ = ["check_job", "publish"]
