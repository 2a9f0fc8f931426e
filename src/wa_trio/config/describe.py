"""The settings described for people: ``wa-trio check``'s lines (secrets redacted) and the
configuration table of README.md and docs/configuration.md (``tools/update_readme_config.py``;
a test checks both files carry it verbatim). Pure."""

from __future__ import annotations

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
