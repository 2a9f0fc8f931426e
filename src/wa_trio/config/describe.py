"""The settings described for people: ``wa-trio check``'s lines (secrets redacted) and the
configuration table of README.md and docs/configuration.md (``tools/update_readme_config.py``;
a test checks both files carry it verbatim). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wa_trio.config import grammar as g
from wa_trio.config.redact import redact_value
from wa_trio.config.settings import FIELDS, Settings
from wa_trio.core.api_keys import ApiKey


def shown_settings(settings: Settings) -> dict[str, str]:
    """Every setting as ``{ENV_NAME: shown value}``, secrets redacted (``wa-trio check``)."""
    shown: dict[str, str] = {}
    for field in FIELDS:
        value = getattr(settings, field.attr)
        text = "" if value is None else str(value)
        if field.env == "WHATSAPP_RATE_LIMIT":
            text = "off" if value is None else f"{value * 60:g}/min"
        if field.env == "WHATSAPP_UNANSWERED_LIMIT" and value is None:
            text = "off"
        if field.env == "WHATSAPP_STORE" and value is None:
            text = "sqlite"
        if isinstance(value, tuple):
            text = ",".join(_shown(item) for item in value)
        if field.env == "WHATSAPP_ACCOUNTS":  # each with the transport it sends through
            text = ",".join(f"{name}:{settings.transport_of(name)}" for name in value)
        if isinstance(value, bool):
            text = ("on" if value else "off") if field.parse is g.on_off else str(value).lower()
        shown[field.env] = redact_value(field.env, text)
    return shown


def _shown(item: Any) -> str:
    """One item of a list setting as ``wa-trio check`` shows it (before redaction)."""
    if isinstance(item, str):
        return item
    if isinstance(item, ApiKey):
        return item.client
    return f"{item:g}s"


def markdown_table() -> str:
    """The README's configuration table (README.md must contain it verbatim; a test checks)."""
    lines = ["| Variable | Default | Expects | Meaning |", "|---|---|---|---|"]
    for field in FIELDS:
        default = "(derived)" if field.default is None else f"`{field.default}`"
        if field.default == "":
            default = "(unset)"
        lines.append(f"| `{field.env}` | {default} | {field.expected} | {field.doc} |")
    return "\n".join(lines)


__all__ = ["markdown_table", "shown_settings"]


#: the Go worker's defaults that only make sense inside its image (a broker named
#: ``rabbitmq`` on the compose network, a volume at ``/app/session``)
_IMAGE_DEFAULTS = ("RABBITMQ_URL", "RABBITMQ_HOST", "WHATSAPP_SESSION_PATH")
IMAGE_SESSION = "/app/session"


def outside_image_defaults(
    settings: Settings, environ: Mapping[str, str], in_container: bool
) -> tuple[str | None, str | None]:
    """(the first line a bare run outside a container prints about the image's defaults it
    uses, a refusal when that would make ``/app`` on the host); (None, None) in a container
    or when the environment names them. Issue 30: the defaults are kept for drop-in
    compatibility inside the image, where they are right."""
    if in_container:
        return None, None
    broker = "RABBITMQ_URL" not in environ and "RABBITMQ_HOST" not in environ
    session = "WHATSAPP_SESSION_PATH" not in environ
    used = []
    if broker:
        used.append(
            f"broker {settings.rabbitmq_host}:{settings.rabbitmq_port} (user "
            f"{settings.rabbitmq_user}, vhost {settings.rabbitmq_vhost})"
        )
    if session:
        used.append(f"session folder {settings.session_path}")
    line = (
        "wa-trio: outside a container, using the image's defaults: " + "; ".join(used)
        + " (set RABBITMQ_URL and WHATSAPP_SESSION_PATH to choose)"
        if used
        else None
    )  # fmt: skip
    refusal = None
    if session and str(settings.session_path) == IMAGE_SESSION:
        refusal = (
            f"WHATSAPP_SESSION_PATH defaults to {IMAGE_SESSION}, the image's volume; outside a "
            "container set it (for instance WHATSAPP_SESSION_PATH=./session): wa-trio does not "
            "make /app on a host"
        )
    return line, refusal
