"""One job's story (pure): what the log, the ledger and the DLQ say about one message id or
job key, for ``wa-trio trace`` and the console's job page.

The log is the worker's eliot file (LOG_TO_FILE): one JSON message a line. A job is one task
per delivery (``wa_trio:job``, with ``job_key`` and ``message_id`` on its start), so a retried
job has one task per attempt; receipts of a sent job are messages of their own
(``wa_trio:status:receipt``, with ``job_key``). ``wanted_tasks`` picks the tasks that name the
query; ``events_of`` reads what happened from their messages, oldest first. Nothing here reads
a job's text or full number: the log never holds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: fields of a log message that name a job
_NAMING = ("job_key", "message_id", "whatsapp_message_id")


@attrs.frozen
class LedgerRow:
    """A job's row in an account's send ledger (``epoch``: the lease that wrote it, PostgreSQL)."""

    account: str
    key: str
    state: str
    whatsapp_id: str | None
    updated_at: float
    epoch: int | None = None


@attrs.frozen
class StoryEvent:
    """One thing that happened to the job, from its log."""

    at: float
    what: str  # taken, sent, retrying, dead_lettered, duplicate, held, delivered, read, ...
    detail: str = ""
    task: str = ""


@attrs.frozen
class Letter:
    """A dead letter of the job still in the DLQ."""

    code: str
    reason: str
    failed_at: str | None
    retry_count: int


@attrs.frozen
class Story:
    query: str
    keys: tuple[str, ...]
    ledger: tuple[LedgerRow, ...]
    events: tuple[StoryEvent, ...]
    letters: tuple[Letter, ...]
    tree: str  # the tasks as eliot-tree renders them
    log_scanned: bool  # False: no log file to read (LOG_TO_FILE off)

    @property
    def found(self) -> bool:
        return bool(self.ledger or self.events or self.letters)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)


def names_query(message: Mapping[str, Any], query: str) -> bool:
    """Whether a log message names the job asked about."""
    return any(message.get(field) == query for field in _NAMING)


def wanted_tasks(messages: Iterable[Mapping[str, Any]], query: str) -> set[str]:
    return {
        str(message["task_uuid"])
        for message in messages
        if "task_uuid" in message and names_query(message, query)
    }


def _started(kind: str, message: Mapping[str, Any]) -> tuple[str, str] | None:
    """(what, detail) of an action's start that tells something."""
    if kind == "wa_trio:job":
        again = " (redelivered)" if message.get("redelivered") else ""
        return "taken", f"delivery {message.get('delivery_tag', '?')}{again}"
    if kind == "wa_trio:job:dead_letter":
        return "dead_lettered", f"{message.get('code')}: {message.get('reason')}"
    if kind == "wa_trio:job:retry_later":
        return (
            "retry_queued",
            f"{message.get('code')}: retry {message.get('retry')} in {message.get('delay')} s",
        )
    if kind == "wa_trio:job:scheduled":
        return "waiting", f"until its send_at (hop {message.get('hop')})"
    if kind == "wa_trio:job:contained":
        return "contained", str(message.get("exception", ""))
    return None


def _event(message: Mapping[str, Any]) -> StoryEvent | None:
    at = float(message.get("timestamp", 0.0))
    task = str(message.get("task_uuid", ""))
    kind = str(message.get("action_type") or message.get("message_type") or "")
    status = message.get("action_status")
    found: tuple[str, str] | None = None
    if status == "started":
        found = _started(kind, message)
    elif kind == "wa_trio:job" and status in {"succeeded", "failed"}:
        fallback = "ended" if status == "succeeded" else "raised"
        found = str(message.get("outcome", fallback)), str(message.get("exception", ""))
    elif kind == "wa_trio:job:send" and status == "succeeded":
        found = "whatsapp_accepted", str(message.get("whatsapp_message_id", ""))
    elif kind == "wa_trio:job:send" and status == "failed":
        found = "send_failed", str(message.get("exception", ""))
    elif kind == "wa_trio:status:receipt":
        found = str(message.get("status")), str(message.get("whatsapp_message_id", ""))
    return None if found is None else StoryEvent(at, found[0], found[1], task)


def events_of(messages: Iterable[Mapping[str, Any]]) -> tuple[StoryEvent, ...]:
    """What happened, oldest first, from the messages of the job's tasks."""
    found = [event for event in map(_event, messages) if event is not None]
    return tuple(sorted(found, key=lambda event: event.at))


__all__ = [
    "LedgerRow",
    "Letter",
    "Story",
    "StoryEvent",
    "events_of",
    "names_query",
    "wanted_tasks",
]
