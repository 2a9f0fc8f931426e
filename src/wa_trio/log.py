"""eliot destinations and redaction helpers.

- ENV=production: one JSON object a line on stdout (what log shippers and eliot-tree read).
- ENV=development: eliot's compact one-line text on stdout, for humans.
- LOG_TO_FILE=true: JSON lines also go to LOG_DIR/wa-trio.log (eliot-tree reads it as is).

Phone numbers reach logs only through ``mask_phone`` (masked in production); message text is never
logged; URLs only through ``config.redact_url``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs
import eliot
from eliot.prettyprint import compact_format

from wa_trio.config.settings import Settings
from wa_trio.core.errors import tidy_traceback
from wa_trio.stores.files import open_private_append


def mask_phone(number: str, *, production: bool = True) -> str:
    """``+5511999999999`` -> ``+55******9999`` in production; unchanged otherwise.

    Keeps the country prefix (two digits) and the last four; everything else is starred, so an
    operator can tell numbers apart in an incident without the log holding the number.
    """
    if not production:
        return number
    digits = number[1:] if number.startswith("+") else number
    if len(digits) <= 6:
        return "+" + "*" * len(digits)
    return f"+{digits[:2]}{'*' * (len(digits) - 6)}{digits[-4:]}"


@attrs.frozen
class Redactor:
    """What the rest of the code uses to put a destination into a log field."""

    production: bool

    def phone(self, number: str) -> str:
        return mask_phone(number, production=self.production)

    def text(self, text: str) -> str:
        """Free text from a library (an error message), ``mask_numbers`` in production."""
        return mask_numbers(text) if self.production else text


_NUMBER_RUN = re.compile(r"\+?\d{8,15}(?!\d)")


def mask_numbers(text: str) -> str:
    """Every phone-number-like run (8-15 digits) in free text masked like ``mask_phone``:
    whatsmeow's errors and log lines can name a recipient's JID (``5511999999999@s...``)."""
    return _NUMBER_RUN.sub(lambda m: mask_phone(m.group(0)), text)


def log_contained(message_type: str, error: BaseException, **fields: Any) -> None:
    """A unit of work that raised and was ended at its boundary (issue 26): the exception's
    type and where it was raised, never its message (it may quote a job's text or number)."""
    eliot.log_message(
        message_type=message_type,
        exception=type(error).__name__,
        traceback=tidy_traceback(error),
        **fields,
    )


@attrs.define
class _TextDestination:
    stream: IO[str]

    def __call__(self, message: dict[str, Any]) -> None:
        self.stream.write(compact_format(message) + "\n")
        self.stream.flush()


@attrs.define
class LoggingHandle:
    """Returned by ``configure_logging``; ``close()`` removes our destinations and closes files."""

    destinations: list[Callable[[dict[str, Any]], None]]
    files: list[IO[str]]

    def close(self) -> None:
        for destination in self.destinations:
            eliot.remove_destination(destination)
        for file in self.files:
            file.close()
        self.destinations.clear()
        self.files.clear()


def log_file_path(settings: Settings) -> Path:
    return settings.log_dir / "wa-trio.log"


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> LoggingHandle:
    """Install the destinations ``settings`` asks for (see module docstring)."""
    out = stream if stream is not None else sys.stdout
    destinations: list[Callable[[dict[str, Any]], None]] = []
    files: list[IO[str]] = []
    if settings.production:
        destinations.append(eliot.FileDestination(file=out))
    else:
        destinations.append(_TextDestination(out))
    if settings.log_to_file:
        file = open_private_append(log_file_path(settings))  # 0600, its folder 0700
        files.append(file)
        destinations.append(eliot.FileDestination(file=file))
    eliot.add_destinations(*destinations)
    # serena logs every connection teardown (even a cancellation) at ERROR through stdlib
    # logging; our eliot messages already say what happened, so keep only its CRITICAL lines
    # (its channel-deadlock warning) on stderr.
    logging.getLogger("serena").setLevel(logging.CRITICAL)
    # psycopg_pool warns at each failed background connect; a statement that cannot get a
    # connection fails with its own error (a store error, logged where it happens)
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    return LoggingHandle(destinations, files)
