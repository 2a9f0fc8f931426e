"""One job's story from a real eliot log file (events/story.py, core/story.py)."""

from __future__ import annotations

import json
from pathlib import Path

import eliot
import pytest

from wa_trio.core.story import events_of, wanted_tasks
from wa_trio.events.story import read_log, render_tree


def _log(path: Path) -> None:
    """Two deliveries of job-1 (dead-lettered, then replayed and sent), a receipt, and an
    unrelated job; written through eliot as the worker writes them."""
    with path.open("w") as file:
        destination = eliot.FileDestination(file=file)
        eliot.add_destinations(destination)
        try:
            with eliot.start_action(action_type="wa_trio:job", job_key="job-1", message_id="job-1",
                                    delivery_tag=1, redelivered=False) as first:  # fmt: skip
                eliot.start_action(
                    action_type="wa_trio:job:dead_letter", code="opted_out", reason="opted out"
                ).finish()
                first.addSuccessFields(outcome="failed")
            with eliot.start_action(action_type="wa_trio:job", job_key="job-2", message_id="job-2",
                                    delivery_tag=2, redelivered=False):  # fmt: skip
                pass
            with eliot.start_action(action_type="wa_trio:job", job_key="job-1", message_id="job-1",
                                    delivery_tag=3, redelivered=False) as job:  # fmt: skip
                with eliot.start_action(action_type="wa_trio:job:send") as send:
                    send.addSuccessFields(whatsapp_message_id="WA1")
                job.addSuccessFields(outcome="success", acked=True)
            eliot.log_message(
                message_type="wa_trio:status:receipt",
                job_key="job-1",
                status="delivered",
                whatsapp_message_id="WA1",
            )
        finally:
            eliot.remove_destination(destination)


def test_the_story_of_a_job_replayed_and_delivered(tmp_path: Path) -> None:
    log = tmp_path / "wa-trio.log"
    _log(log)
    messages = read_log(log, "job-1")
    assert messages and all(m.get("job_key") != "job-2" for m in messages)
    assert len({m["task_uuid"] for m in messages}) == 3  # two deliveries and the receipt
    what = [event.what for event in events_of(messages)]
    assert what == [
        "taken", "dead_lettered", "failed", "taken", "whatsapp_accepted", "success", "delivered"
    ]  # fmt: skip
    tree = render_tree(messages)
    assert tree.count("wa_trio:job/1") == 2 and "opted_out" in tree and "job-2" not in tree


def test_a_missing_log_or_an_unknown_job_is_an_empty_story(tmp_path: Path) -> None:
    assert read_log(tmp_path / "none.log", "job-1") == []
    log = tmp_path / "wa-trio.log"
    _log(log)
    assert read_log(log, "job-9") == []
    assert read_log(log, "") == []


def test_only_the_end_of_a_large_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "wa-trio.log"
    _log(log)
    size = log.stat().st_size
    with log.open("rb+") as file:  # the early job's lines pushed out of the scanned window
        text = file.read()
        file.seek(0)
        file.write(b"garbage that is not json\n" * 10 + text)
    assert read_log(log, "job-1", scan=size + 5) != []
    assert read_log(log, "job-1", scan=100) == []


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"task_uuid": "t", "job_key": "k"}, True),
        ({"task_uuid": "t", "message_id": "k"}, True),
        ({"task_uuid": "t", "whatsapp_message_id": "k"}, True),
        ({"task_uuid": "t", "job_key": "other"}, False),
        ({"job_key": "k"}, False),  # not an eliot message
    ],
)
def test_which_messages_name_the_job(message: dict[str, str], named: bool) -> None:
    assert (wanted_tasks([message], "k") == {"t"}) is named


def test_a_line_that_is_not_an_object_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "wa-trio.log"
    log.write_text('[1, 2]\n"job-1"\n' + json.dumps({"task_uuid": "t", "job_key": "job-1"}) + "\n")
    assert [m["task_uuid"] for m in read_log(log, "job-1")] == ["t"]
