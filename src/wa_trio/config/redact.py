"""Secrecy, declared once: which variables are secrets, and how each is shown (in a ``repr``
of the settings, in ``wa-trio check``, in a ``ConfigError``). A plain secret (a password, a
token) is never shown; a URL that may carry a password is shown with it replaced by ``***``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SECRET_VARS = frozenset(
    {
        "RABBITMQ_PASSWORD",
        "RABBITMQ_URL",
        "WHATSAPP_PROXY",
        "WHATSAPP_STORE",
        "WHATSAPP_ADMIN_TOKEN",
        "WHATSAPP_API_KEYS",
        "WHATSAPP_STATUS_WEBHOOK_SECRET",
        "WHATSAPP_STATUS_WEBHOOK_URL",
        "WHATSAPP_CLOUD_ACCESS_TOKEN",
        "WHATSAPP_CLOUD_APP_SECRET",
        "WHATSAPP_CLOUD_VERIFY_TOKEN",
    }
)
_PLAIN_SECRETS = frozenset(
    {
        "RABBITMQ_PASSWORD",
        "WHATSAPP_ADMIN_TOKEN",
        "WHATSAPP_API_KEYS",
        "WHATSAPP_STATUS_WEBHOOK_SECRET",
        "WHATSAPP_CLOUD_ACCESS_TOKEN",
        "WHATSAPP_CLOUD_APP_SECRET",
        "WHATSAPP_CLOUD_VERIFY_TOKEN",
    }
)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log).

    By structure, not by a successful parse: a password with an unencoded ``/``, ``#``, ``?`` or
    ``@`` defeats URL parsing, so everything between ``scheme://`` and the last ``@`` is the
    user information, whatever it holds.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redacted>" if "@" in url else url
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, _password = rest[:at].partition(":")
    shown = f"{user}:***" if colon else user
    return f"{scheme}://{shown}@{rest[at + 1 :]}"


def redact_value(variable: str, value: str) -> str:
    if variable in _PLAIN_SECRETS:
        return "***" if value else ""
    if variable in SECRET_VARS:
        return redact_url(value)
    return value


def secret_repr(variable: str) -> bool | Callable[[Any], str]:
    """The attrs ``repr`` option of the setting of ``variable``: hidden, redacted or plain."""
    if variable in _PLAIN_SECRETS:
        return False
    if variable in SECRET_VARS:
        return lambda url: repr(url and redact_url(url))
    return True


__all__ = ["SECRET_VARS", "redact_url", "redact_value", "secret_repr"]
