"""Content policy (pure): the original worker's SQL-injection / XSS filter, kept on by default.

WhatsApp messages are plain text, so these patterns protect the *publishers'* downstream systems
(logs viewers, CRMs that render text) rather than WhatsApp itself. They are deliberately narrow:
each one needs SQL or HTML *syntax*, not just a keyword, so everyday text passes
("Select your seat", "I <3 you", "Drop me a line", "Union Station at 5"); the corpus of
tests/data/benign_texts.txt measures it (zero false positives required). The list is documented
in README.md ("Content policy") and tested on both sides in tests/unit/core/test_policy.py.
Switch it off with WHATSAPP_CONTENT_FILTER=off.
"""

from __future__ import annotations

import re

import attrs

_FLAGS = re.IGNORECASE | re.DOTALL

_IDENT = r"[\w.`\"\[\]]+"  # a table name, maybe quoted or schema-qualified
_END = r"\s*(;|--|#|/\*|$)"  # where a SQL statement ends

#: (name, pattern): the name goes into the rejection message, never the matched text.
#: Each needs SQL or HTML *syntax* around the keyword (a statement's shape, an attribute, a
#: quote then a comment at the end): tests/data/benign_texts.txt holds ordinary notifications
#: in several languages that must all pass ("delete from your calendar", "'SUMMER'-- 20% off",
#: "I love <svg> icons").
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
            rf";\s*(drop\s+(table|database)\s+{_IDENT}{_END}"
            rf"|delete\s+from\s+{_IDENT}\s*(where\b|;|--|$)"
            rf"|insert\s+into\s+{_IDENT}\s*(\(|values\b|select\b)"
            rf"|update\s+{_IDENT}\s+set\s+\w+\s*="
            rf"|alter\s+table\s+{_IDENT}\s+(add|drop|rename|alter)\b"
            rf"|truncate\s+table\s+{_IDENT}{_END}"
            rf"|create\s+(table|user|database)\s+{_IDENT}\s*(\(|;|$|identified\b)"
            rf"|exec(ute)?\s+(xp_|sp_)\w+|shutdown{_END})",
            _FLAGS,
        ),
    ),
    (
        "sql_drop",
        re.compile(
            rf"\b(drop|truncate)\s+(table|database|schema)\s+(if\s+exists\s+)?{_IDENT}"
            rf"(\s+cascade\b|{_END})",
            _FLAGS,
        ),
    ),
    # a quote closed, then the rest of the line commented out: admin'--
    ("sql_comment_after_quote", re.compile(r"['\"]\s*(--|#|/\*)\s*$", _FLAGS)),
    (
        "sql_time_function",
        re.compile(
            r"\bpg_sleep\s*\(|(\b(and|or|select|if|then|when)\b|[;'\"(,=])\s*"
            r"(sleep|benchmark)\s*\(\s*\d",
            _FLAGS,
        ),
    ),
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
            # embedding tags are dangerous bare; the others once they carry an attribute
            r"<\s*(iframe|frame|object|embed|applet)\b"
            r"|<\s*(svg|math|base|form|meta|link|style)\b[^<>]*\s[\w:-]+\s*=",
            _FLAGS,
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
