"""Content policy (pure): the original worker's SQL-injection / XSS filter, kept on by default.

WhatsApp messages are plain text, so these patterns protect the *publishers'* downstream systems
(logs viewers, CRMs that render text) rather than WhatsApp itself. They are deliberately narrow:
each one needs SQL or HTML *syntax*, not just a keyword, so everyday text passes
("Select your seat", "I <3 you", "Drop me a line", "Union Station at 5"). The list is documented
in README.md ("Content policy") and tested on both sides in tests/unit/test_policy.py.
Switch it off with WHATSAPP_CONTENT_FILTER=off.
"""

from __future__ import annotations

import random
import re

import attrs

_FLAGS = re.IGNORECASE | re.DOTALL

#: (name, pattern): the name goes into the rejection message, never the matched text.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # SQL
    (
        "sql_tautology",
        re.compile(r"['\"]\s*(or|and)\s+['\"]?\w+['\"]?\s*(=|like)\s*['\"]?\w+", _FLAGS),
    ),
    ("sql_union_select", re.compile(r"\bunion\s+(all\s+)?select\b", _FLAGS)),
    (
        "sql_stacked_query",
        re.compile(
            r";\s*(drop\s+(table|database)|delete\s+from|insert\s+into|update\s+\w+\s+set|"
            r"alter\s+table|truncate\s+table|create\s+(table|user|database)|exec(ute)?\s|shutdown\b)",
            _FLAGS,
        ),
    ),
    ("sql_drop", re.compile(r"\b(drop|truncate)\s+(table|database|schema)\b", _FLAGS)),
    ("sql_comment_after_quote", re.compile(r"['\"]\s*(--|#|/\*)", _FLAGS)),
    ("sql_time_function", re.compile(r"\b(sleep|benchmark|pg_sleep)\s*\(\s*\d", _FLAGS)),
    ("sql_waitfor", re.compile(r"\bwaitfor\s+delay\b", _FLAGS)),
    ("sql_procedure", re.compile(r"\b(xp_cmdshell|sp_executesql|information_schema)\b", _FLAGS)),
    # XSS
    ("xss_script_tag", re.compile(r"<\s*/?\s*script\b", _FLAGS)),
    ("xss_js_url", re.compile(r"\b(javascript|vbscript)\s*:", _FLAGS)),
    ("xss_data_html", re.compile(r"\bdata\s*:\s*text/html", _FLAGS)),
    ("xss_event_handler", re.compile(r"<[a-z][^>]*\bon[a-z]+\s*=", _FLAGS)),
    (
        "xss_dangerous_tag",
        re.compile(
            r"<\s*(iframe|frame|object|embed|applet|svg|math|base|form|meta|link|style)\b", _FLAGS
        ),
    ),
    (
        "xss_dom_sink",
        re.compile(r"\b(document\.cookie|document\.write|window\.location)\b", _FLAGS),
    ),
)


@attrs.frozen
class ContentVerdict:
    allowed: bool
    rule: str | None = None


def check_content(text: str) -> ContentVerdict:
    """Return whether ``text`` passes the policy and, if not, the name of the first rule hit."""
    for name, pattern in PATTERNS:
        if pattern.search(text):
            return ContentVerdict(False, name)
    return ContentVerdict(True)


@attrs.define
class Backoff:
    """Capped exponential backoff with full jitter (pure; the caller sleeps).

    ``next_delay()`` returns a delay drawn from ``[base/2, base]`` where ``base`` doubles from
    ``initial`` up to ``cap``; ``reset()`` after a success. Jitter keeps a fleet of workers from
    reconnecting in lockstep after a broker restart.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return base / 2 + self.rng.random() * base / 2

    def reset(self) -> None:
        self.attempts = 0


# whatsmeow gave up waiting for the server's answer (ErrMessageTimedOut), or the socket went
# away before it came: WhatsApp may or may not have taken the message. A retry sends it under a
# new message id (neonize cannot reuse one), so the recipient would see it twice.
_AMBIGUOUS = re.compile(
    r"timed out waiting for message send response|disconnected before", re.IGNORECASE
)
AMBIGUOUS_CODES = frozenset({"send_timed_out"})
_TRANSIENT = re.compile(
    r"not connected|websocket|timed? ?out|deadline|connection|EOF|broken pipe|reset by peer|"
    r"server returned error 5\d\d|\b5\d\d\b|429|rate.?limit|try again|unavailable",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"not on whatsapp|no such user|invalid jid|item-not-found|\b40[0346]\b|forbidden|"
    r"not-authorized|blocked|too long|not-acceptable",
    re.IGNORECASE,
)


def classify_send_error(text: str) -> tuple[str, bool]:
    """(error code, transient?) for a WhatsApp send error text.

    Unknown errors are transient: a retry costs little and the retry limit dead-letters them in
    the end, while wrongly calling an error permanent would drop a message that could have gone.
    Codes in ``AMBIGUOUS_CODES`` mean the message may have gone out: retried only under
    WHATSAPP_AMBIGUOUS=resend.
    """
    if _AMBIGUOUS.search(text):
        return "send_timed_out", True  # in AMBIGUOUS_CODES: WHATSAPP_AMBIGUOUS decides
    if _TRANSIENT.search(text):
        return "whatsapp_unavailable", True
    if _PERMANENT.search(text):
        return "send_rejected", False
    return "send_failed", True


def retry_delay(schedule: tuple[float, ...], retries_done: int) -> float | None:
    """Delay before retry number ``retries_done + 1``, or None when the schedule is spent."""
    if retries_done < 0:
        retries_done = 0
    if retries_done >= len(schedule):
        return None
    return schedule[retries_done]


def delay_label(seconds: float) -> str:
    """A stable queue-name suffix for a delay: 5 -> '5s', 0.25 -> '250ms'."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
