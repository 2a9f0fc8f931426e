"""One job's plan as a table (core/plan.py): every branch, the ambiguous policy on every path
that reads the ledger. No broker, no trio, no WhatsApp."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from wa_trio.core import plan
from wa_trio.core.errors import SendError
from wa_trio.core.outcome import CRASH_LIMIT, Decision, Found, Outcome
from wa_trio.core.plan import Known, Rules, next_step
from wa_trio.core.safety_rules import Verdict

NOW = 1_000_000.0
DAY = 86400.0
RULES = Rules(schedule_max=30 * DAY)
PACED = Rules(schedule_max=30 * DAY, pacing=True)
SAFE = Rules(schedule_max=30 * DAY, safety=True)
SKIP = Rules(schedule_max=30 * DAY, ambiguous="skip", pacing=True)
FAILURE = SendError("boom", code="send_failed")
PARK = Verdict("reachout_paused", dead_letter=False, message="paused", wait=600.0)
REFUSE = Verdict("opted_out", dead_letter=True, message="opted out")


def known(**fields: Any) -> Known:
    """A job validated, judged, fetched, peeked, paced and connected unless ``fields`` say."""
    base = Known("hash", check_ledger=True, validated=True, connected=True)
    return attrs.evolve(base, **fields)


def ready(**fields: Any) -> Known:
    return known(judged=True, peeked=True, paced=True, **fields)


def row(state: str, *, body: str = "hash", deaths: int = 0) -> Found:
    return Found(state, body, deaths)


CASES: list[tuple[str, Known, Rules, plan.Step]] = [
    # validation
    ("new job", Known("hash", check_ledger=False), RULES, plan.Validate()),
    ("stopped comes first", known(stopped=True, validated=False), RULES, plan.Hold()),
    (
        "invalid",
        known(problem=("invalid_phone", "bad")),
        RULES,
        plan.DeadLetter("invalid_phone", "bad", outcome=Outcome.INVALID),
    ),
    # schedule (send_at)
    (
        "too far ahead",
        known(send_at=NOW + 31 * DAY),
        RULES,
        plan.DeadLetter(
            "schedule_too_far",
            "send_at is 31.0 days ahead; WHATSAPP_SCHEDULE_MAX is 30 days",
            outcome=Outcome.INVALID,
        ),
    ),
    ("an hour ahead: parked", known(send_at=NOW + 3600), RULES, plan.Park(3600.0)),
    ("a sub-second ahead: waited", known(send_at=NOW + 0.25), RULES, plan.Wait(0.25)),
    ("waited out: on", known(send_at=NOW + 0.25, due=True), RULES, plan.Begin()),
    ("due now", known(send_at=NOW - 5), RULES, plan.Begin()),
    # account safety
    ("safety asked", known(), SAFE, plan.Judge()),
    ("groups are not judged", known(group=True), SAFE, plan.Begin()),
    ("safety clear", known(judged=True), SAFE, plan.Begin()),
    ("safety parks", known(judged=True, verdict=PARK), SAFE, plan.Park(600.0, "reachout_paused")),
    (
        "safety refuses",
        known(judged=True, verdict=REFUSE),
        SAFE,
        plan.DeadLetter("opted_out", "opted out"),
    ),
    # media
    ("media fetched first", known(has_media=True), RULES, plan.Fetch()),
    ("media fetched", known(has_media=True, fetched=True), RULES, plan.Begin()),
    (
        "media fetch failed: retried",
        known(has_media=True, fetched=True, media_problem=("media_fetch_failed", "503")),
        RULES,
        plan.FailedSend(SendError("503", code="media_fetch_failed")),
    ),
    (
        "media refused: invalid",
        known(has_media=True, fetched=True, media_problem=("media_too_large", "big")),
        RULES,
        plan.DeadLetter("media_too_large", "big", outcome=Outcome.INVALID),
    ),
    # the ledger peek and pacing
    ("peek before pacing", known(), PACED, plan.Peek()),
    ("no peek for a fresh body-keyed job", known(check_ledger=False), PACED, plan.Pace()),
    ("peeked, nothing: paced", known(peeked=True), PACED, plan.Pace()),
    (
        "peeked a sent row: duplicate",
        known(peeked=True, peek=row("sent")),
        PACED,
        plan.NotSent(Decision.DUPLICATE),
    ),
    (
        "peeked another body: conflict",
        known(peeked=True, peek=row("sent", body="other")),
        PACED,
        plan.NotSent(Decision.CONFLICT),
    ),
    ("peeked sending (resend): paced", known(peeked=True, peek=row("sending")), PACED, plan.Pace()),
    ("peeked sending (skip): paced", known(peeked=True, peek=row("sending")), SKIP, plan.Pace()),
    ("paced: connect", known(peeked=True, paced=True, connected=False), PACED, plan.Connect()),
    ("no pacer: no peek", known(), RULES, plan.Begin()),
    # connected, expiry, begin
    ("connect", known(connected=False), RULES, plan.Connect()),
    # a stuck account with WHATSAPP_FALLBACK: the ledger read, then the Cloud API account
    ("stuck: fall back", ready(fall_back=True), RULES, plan.FallBack()),
    ("stuck, not read: peek", known(fall_back=True), RULES, plan.Peek()),
    ("stuck, no ledger", known(fall_back=True, check_ledger=False), RULES, plan.FallBack()),
    (
        "stuck, sent",
        ready(fall_back=True, peek=row("sent")),
        RULES,
        plan.NotSent(Decision.DUPLICATE),
    ),
    (
        "stuck, forwarded before",
        ready(fall_back=True, peek=row("forwarded")),
        RULES,
        plan.NotSent(Decision.DUPLICATE),
    ),
    (
        "stuck, sending (skip)",
        ready(fall_back=True, peek=row("sending")),
        SKIP,
        plan.NotSent(Decision.AMBIGUOUS_SKIP),
    ),
    ("stuck, sending (resend)", ready(fall_back=True, peek=row("sending")), RULES, plan.FallBack()),
    (
        "stuck, expired",
        ready(fall_back=True, expires=NOW - 1),
        RULES,
        plan.Expired("before its send"),
    ),
    ("expired before its send", known(expires=NOW - 1), RULES, plan.Expired("before its send")),
    ("not expired yet", known(expires=NOW + 1), RULES, plan.Begin()),
    # after begin: the ledger's verdict with each policy
    ("begun, fresh: send", ready(begun=True), RULES, plan.Send()),
    ("begun, failed row: send", ready(begun=True, found=row("failed")), RULES, plan.Send()),
    (
        "begun, sending (resend)",
        ready(begun=True, found=row("sending")),
        RULES,
        plan.Send(ambiguous=True),
    ),
    (
        "begun, sending (skip)",
        ready(begun=True, found=row("sending")),
        SKIP,
        plan.NotSent(Decision.AMBIGUOUS_SKIP),
    ),
    (
        "begun, sent (skip)",
        ready(begun=True, found=row("sent")),
        SKIP,
        plan.NotSent(Decision.DUPLICATE),
    ),
    (
        "begun, crash loop (resend)",
        ready(begun=True, found=row("sending", deaths=CRASH_LIMIT - 1)),
        RULES,
        plan.CrashLoop(),
    ),
    (
        "begun, crash loop (skip)",
        ready(begun=True, found=row("sending", deaths=CRASH_LIMIT - 1)),
        SKIP,
        plan.CrashLoop(),
    ),
    (
        "begun, conflict",
        ready(begun=True, found=row("sending", body="other")),
        RULES,
        plan.NotSent(Decision.CONFLICT),
    ),
    # after the send
    ("sent", ready(begun=True, sent=True), RULES, plan.Sent()),
    (
        "resent after an ambiguous row",
        ready(begun=True, found=row("sending"), sent=True),
        RULES,
        plan.Sent(),
    ),
    ("send failed", ready(begun=True, send_error=FAILURE), RULES, plan.FailedSend(FAILURE)),
    ("held mid-send", ready(begun=True, stopped=True), RULES, plan.Hold()),
]


@pytest.mark.parametrize(
    ("known_", "rules", "step"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_next_step(known_: Known, rules: Rules, step: plan.Step) -> None:
    assert comparable(next_step(known_, rules, NOW)) == comparable(step)


def comparable(step: plan.Step) -> object:
    """Exceptions compare by identity: a failed send by its error's code and text."""
    if isinstance(step, plan.FailedSend):
        return ("FailedSend", step.error.code, str(step.error))
    return step


def test_every_step_kind_is_reached_by_the_table() -> None:
    reached = {type(case[3]) for case in CASES}
    kinds = {*plan.ENDS, plan.Validate, plan.Wait, plan.Judge, plan.Fetch, plan.Peek}
    kinds |= {plan.Pace, plan.Connect, plan.Begin, plan.Send}
    assert kinds <= reached


def test_a_job_walked_through_the_plan_ends_sent_in_the_documented_order() -> None:
    """The plan driven as the handler drives it, each step answered: the order of steps."""
    k = Known("hash", check_ledger=True)
    rules = Rules(schedule_max=30 * DAY, pacing=True, safety=True)
    answers: dict[type, dict[str, Any]] = {
        plan.Validate: {"validated": True, "has_media": True, "send_at": NOW + 0.5},
        plan.Wait: {"due": True},
        plan.Judge: {"judged": True},
        plan.Fetch: {"fetched": True},
        plan.Peek: {"peeked": True},
        plan.Pace: {"paced": True},
        plan.Connect: {"connected": True},
        plan.Begin: {"begun": True},
        plan.Send: {"sent": True},
    }
    seen = []
    for _ in range(20):
        step = next_step(k, rules, NOW)
        seen.append(type(step).__name__)
        if isinstance(step, plan.ENDS):
            break
        for name, value in answers[type(step)].items():
            setattr(k, name, value)
    assert seen == [
        "Validate", "Wait", "Judge", "Fetch", "Peek", "Pace", "Connect", "Begin", "Send", "Sent"
    ]  # fmt: skip
