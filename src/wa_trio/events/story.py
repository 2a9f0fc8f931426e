"""One job's story, gathered (``wa-trio trace`` and the console's job page): the eliot log's
tasks that name it, rendered as eliot-tree renders them; every account's ledger rows; its dead
letters still in the DLQ. The rules of what counts are pure (``core/story.py``).

Blocking parts (the log file, the ledgers) run in a worker thread. The log is read from its
end, at most ``SCAN_BYTES`` of it, in two streaming passes (the tasks that name the job, then
their messages), so a large log costs a read, not memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from eliottree import get_theme, render_tasks, tasks_from_iterable

from wa_trio.bus.dlq import DeadLetter, list_dead_letters
from wa_trio.config.settings import Settings
from wa_trio.core.errors import WaTrioError
from wa_trio.core.story import Letter, Story, events_of, wanted_tasks
from wa_trio.log import log_file_path
from wa_trio.stores import open as stores

SCAN_BYTES = 256 * 2**20  # the log's last 256 MiB
MAX_TASKS = 50  # tasks of one job shown (a job retried more often shows its latest)


def _lines(path: Path, scan: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        size = file.seek(0, io.SEEK_END)
        file.seek(max(0, size - scan))
        if size > scan:
            file.readline()  # a partial line
        yield from file


def _parsed(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def read_log(path: Path, query: str, scan: int = SCAN_BYTES) -> list[dict[str, Any]]:
    """The messages of the tasks that name ``query`` (blocking), in the file's order."""
    if not query or not path.exists():
        return []
    needle = json.dumps(query).encode()
    naming = (m for line in _lines(path, scan) if needle in line if (m := _parsed(line)))
    tasks = sorted(wanted_tasks(naming, query))[-MAX_TASKS:]
    if not tasks:
        return []
    marks = [json.dumps(task).encode() for task in tasks]
    return [
        message
        for line in _lines(path, scan)
        if any(mark in line for mark in marks)
        if (message := _parsed(line)) and message.get("task_uuid") in tasks
    ]


def render_tree(messages: list[dict[str, Any]]) -> str:
    """The tasks as ``eliot-tree`` prints them (no colour)."""
    out = io.StringIO()
    plain = get_theme(dark_background=False)  # no colour function: plain text
    render_tasks(out.write, tasks_from_iterable(messages), human_readable=True, theme=plain)
    return out.getvalue()


def _gather(settings: Settings, query: str, letters: list[DeadLetter]) -> Story:
    path = log_file_path(settings)
    messages = read_log(path, query) if settings.log_to_file else []
    keys = sorted({query} | {str(m["job_key"]) for m in messages if m.get("job_key")})
    mine = [
        Letter(letter.code, letter.reason, letter.failed_at, letter.retry_count)
        for letter in letters
        if query in {letter.message_id, letter.job_key}
    ]
    return Story(
        query=query,
        keys=tuple(keys),
        ledger=tuple(stores.ledger_rows(settings, keys)),
        events=events_of(messages),
        letters=tuple(mine),
        tree=render_tree(messages) if messages else "",
        log_scanned=settings.log_to_file and path.exists(),
    )


async def job_story(settings: Settings, query: str, letters: list[DeadLetter]) -> Story:
    """Everything known of one message id or job key (``letters``: the DLQ as just listed)."""
    return await trio.to_thread.run_sync(_gather, settings, query.strip(), letters)


DLQ_SCAN = 1000  # dead letters looked through for the job's


async def story_with_letters(settings: Settings, query: str) -> tuple[Story, str | None]:
    """The story, its dead letters read from the DLQ first (``wa-trio trace`` and the console):
    a broker that cannot be reached leaves them out and says so (the note); the rest is local."""
    try:
        letters, note = await list_dead_letters(settings, DLQ_SCAN), None
    except WaTrioError as error:
        letters, note = [], f"the DLQ could not be read: {error.message}"
    return await job_story(settings, query, letters), note


__all__ = ["SCAN_BYTES", "job_story", "read_log", "render_tree", "story_with_letters"]
