"""The value grammar of the settings: each parser turns one environment variable's text into
its typed value, or raises ``ValueError`` (``Settings.from_env`` turns that into a one-line
``ConfigError`` naming the variable and what it expects). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from wa_trio.core.api_keys import ApiKey, parse_api_keys


def text(value: str) -> str:
    return value


def nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError
    return value


def port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError
    return port


def http_port(value: str) -> int:
    port = int(value)
    if not 0 <= port < 65536:  # 0 = any free port (tests)
        raise ValueError
    return port


def prefetch(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:  # basic.qos carries a 16-bit count
        raise ValueError
    return number


def optional_token(value: str) -> str | None:
    if not value:
        return None
    if len(value) < 16 or any(ch.isspace() for ch in value):
        raise ValueError
    return value


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError
    return number


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError


def on_off(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in {"on", "off"}:
        raise ValueError
    return lowered == "on"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str) -> float:
    """``"5s"``, ``"2m"``, ``"1.5"`` (seconds), ``"250ms"``, ``"7d"`` -> seconds."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(value)
    return float(match.group(1)) * _UNIT[match.group(2)]


def duration(value: str) -> float:
    return parse_duration(value)


def rate(value: str) -> float | None:
    from wa_trio.core.pacing import parse_rate

    try:
        return parse_rate(value)
    except (KeyError, ValueError):
        raise ValueError(value) from None


def durations(value: str) -> tuple[float, ...]:
    delays = tuple(parse_duration(part) for part in value.split(",") if part.strip())
    if not delays or any(d <= 0 for d in delays):
        raise ValueError(value)
    return delays


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError
        return value

    return parse


def optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def amqp_url(value: str) -> str:
    """One URL; its host part may list several nodes of a cluster, comma-separated
    (``amqp://user:pass@node1:5672,node2:5672,node3/vhost``): ``broker_nodes``."""
    broker_nodes(value)
    return value


def broker_nodes(url: str) -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` of every node an AMQP URL lists, in order (the default port for
    a node without one). Raises ValueError on anything else."""
    scheme, sep, rest = url.partition("://")
    if scheme not in {"amqp", "amqps"} or not sep:
        raise ValueError
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc[netloc.rfind("@") + 1 :]
    default = 5671 if scheme == "amqps" else 5672
    nodes = []
    for node in hosts.split(","):
        parts = urlsplit(f"{scheme}://{node}")
        if not parts.hostname:
            raise ValueError
        nodes.append((parts.hostname, parts.port or default))  # .port raises on a bad port
    return tuple(nodes)


def http_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError
    _ = parts.port
    return value


def proxy_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https", "socks5"} or not parts.hostname:
        raise ValueError
    _ = parts.port
    return value


def store(value: str) -> str | None:
    if value == "sqlite":
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"postgres", "postgresql"} or not parts.hostname or not parts.path[1:]:
        raise ValueError
    _ = parts.port
    return value


def base_url(value: str) -> str:
    url = http_url(value)
    if url is None:
        raise ValueError
    return url.rstrip("/")


def optional_digits(value: str) -> str | None:
    if not value:
        return None
    if not re.fullmatch(r"\d{1,32}", value):
        raise ValueError
    return value


def optional_secret(value: str) -> str | None:
    if not value:
        return None
    if len(value) > 4096 or any(ch.isspace() for ch in value):
        raise ValueError
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(value: str) -> int:
    """``"16MB"`` (powers of 1000), ``"1MiB"``, ``"5000"`` bytes -> bytes (at least 1)."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(value)
    unit = match.group(2).lower() if match.group(2) else None
    size = int(float(match.group(1)) * _SIZE_UNIT[unit])
    if size < 1:
        raise ValueError(value)
    return size


def size(value: str) -> int:
    return parse_size(value)


def optional_size(value: str) -> int | None:
    return parse_size(value) if value.strip() else None


def media_kinds(value: str) -> tuple[str, ...]:
    from wa_trio.core.media_rules import KINDS

    kinds = tuple(part.strip() for part in value.split(",") if part.strip())
    if any(kind not in KINDS for kind in kinds):
        raise ValueError
    return kinds


_ACCOUNT = re.compile(r"[a-z0-9-]{1,32}")


#: the transports an account may name (``WHATSAPP_ACCOUNTS=shop:neonize,api:cloud-api``)
TRANSPORTS = ("neonize", "cloud-api", "dry-run")


def account_entries(value: str) -> tuple[tuple[str, str | None], ...]:
    """``name[:transport],...``: each account's name and the transport it names (None: the
    process's WHATSAPP_TRANSPORT)."""
    entries = []
    for part in (part.strip() for part in value.split(",")):
        if not part:
            continue
        name, colon, transport = (item.strip() for item in part.partition(":"))
        if not _ACCOUNT.fullmatch(name) or (colon and transport not in TRANSPORTS):
            raise ValueError
        entries.append((name, transport or None))
    names = [name for name, _ in entries]
    if not names or len(set(names)) != len(names):
        raise ValueError
    return tuple(entries)


def accounts(value: str) -> tuple[str, ...]:
    return tuple(name for name, _ in account_entries(value))


def account_transports(value: str) -> tuple[tuple[str, str], ...]:
    """The accounts of ``value`` that name their transport, with it."""
    return tuple((name, kind) for name, kind in account_entries(value) if kind is not None)


def keywords(value: str) -> tuple[str, ...]:
    words = tuple(part.strip() for part in value.split(",") if part.strip())
    if any(len(word) > 64 for word in words):
        raise ValueError
    return words


def optional_text(value: str) -> str | None:
    if len(value) > 1024:
        raise ValueError
    return value or None


def optional_count(value: str) -> int | None:
    if value.strip().lower() == "off":
        return None
    return positive_int(value)


def optional_mps(value: str) -> int | None:
    if not value.strip():
        return None
    count = positive_int(value)
    if count > 10_000:
        raise ValueError
    return count


def optional_phone(value: str) -> str | None:
    if not value:
        return None
    cleaned = re.sub(r"[\s\-.()]", "", value)
    if not re.fullmatch(r"\+\d{8,15}", cleaned):
        raise ValueError
    return cleaned


def api_keys(value: str) -> tuple[ApiKey, ...]:
    return parse_api_keys(value)


def api_rate(value: str) -> float:
    parsed = rate(value)
    if parsed is None:
        raise ValueError
    return parsed
