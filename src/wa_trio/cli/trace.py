"""``wa-trio trace <message-id|job-key>``: one job's story, as text or ``--json``.

The same story as the console's job page (``events/story.py``): its ledger rows in every
account (with the lease epoch on PostgreSQL), what its log says happened (taken, sent,
retried, dead-lettered, delivered, read), its dead letters still in the DLQ, and its eliot
tree. A broker that cannot be reached leaves the dead letters out and says so; the rest is
local.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import trio

from wa_trio.cli.exits import EXIT_FAILED, EXIT_OK
from wa_trio.config.settings import Settings
from wa_trio.core.story import Story
from wa_trio.events.story import story_with_letters


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def as_text(story: Story, dlq_note: str | None) -> str:
    lines = [f"job {story.query} (keys: {', '.join(story.keys)})", "", "ledger:"]
    lines += [
        f"  {row.account}: {row.state} at {_when(row.updated_at)}"
        + (f", WhatsApp id {row.whatsapp_id}" if row.whatsapp_id else "")
        + (f", lease epoch {row.epoch}" if row.epoch is not None else "")
        for row in story.ledger
    ] or ["  (no row: never begun, or pruned after WHATSAPP_DEDUP_WINDOW)"]
    lines += ["", "what happened:"]
    lines += [
        f"  {_when(event.at)}  {event.what}" + (f"  {event.detail}" if event.detail else "")
        for event in story.events
    ] or ["  (nothing in the log)" if story.log_scanned else "  (no log file: LOG_TO_FILE=true)"]
    lines += ["", "dead letters:"]
    lines += [
        f"  {letter.code}: {letter.reason} (failed at {letter.failed_at}, "
        f"{letter.retry_count} retries)"
        for letter in story.letters
    ] or [f"  ({dlq_note or 'none in the DLQ'})"]
    if story.tree:
        lines += ["", "eliot tree:", story.tree.rstrip()]
    return "\n".join(lines)


def trace(settings: Settings, query: str, *, as_json: bool) -> int:
    story, note = trio.run(story_with_letters, settings, query)
    if as_json:
        print(json.dumps({**story.as_dict(), "found": story.found, "dlq_note": note}))
    else:
        print(as_text(story, note))
    if not story.found:
        print(f"wa-trio: nothing known of {query!r}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


__all__ = ["as_text", "trace"]
