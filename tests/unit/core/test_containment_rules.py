"""Issue 26's root causes as table tests: each rule that now stops an input before it can raise
somewhere an exception ends the worker."""

from __future__ import annotations

import math
import resource
import struct
from pathlib import Path
from typing import Any

import pytest
from serena.utils.buffer import DecodingBuffer

from wa_trio.bus import amqp  # noqa: F401 - applies the serena corrections
from wa_trio.bus._serena_patch import MAX_DEPTH, TOO_DEEP
from wa_trio.core import cloud_template
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.expiry import deadline
from wa_trio.core.instants import LATEST, MILLISECONDS, epoch_seconds
from wa_trio.core.media_rules import refusal, url_problem
from wa_trio.core.templates import TemplateProblem, TemplateSet
from wa_trio.events.status_webhook import REDIRECT_ATTEMPTS, redirect, transient
from wa_trio.web.console_auth import same_origin
from wa_trio.worker.startup import fd_plan


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://files.example.com/menu.png", None),
        ("http://bücher.de/x.png", None),  # IDNA that DNS can take
        ("http://[::1]:8080/x", None),
        ("http://☃.com/x.png", "host"),
        ("http://.../x.png", "host"),
        (f"http://{'a' * 64}.com/x.png", "host"),
        ("http://1.2.3.4/a\x01b", "control"),
        ("http://1.2.3.4/a b", "control"),
        ("http://example.com/\ud800.png", "control"),
        ("ftp://example.com/x", "http"),
        ("http://user:pw@example.com/x", "credentials"),
        ("http://[::1/x", "valid URL"),
    ],
)
def test_a_media_url_is_checked_before_any_request(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) is (problem is None)
    if problem is not None:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("2002:7f00:1::1", True),  # 6to4 wrapping 127.0.0.1
        ("2002:a9fe:a9fe::1", True),  # 6to4 wrapping the metadata address
        ("fec0::1", True),  # site-local
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
        ("64:ff9b::7f00:1", True),  # NAT64 of loopback
        ("2606:4700:4700::1111", False),
        ("8.8.8.8", False),
    ],
)
def test_ipv6_forms_that_wrap_a_private_address_are_refused(address: str, refused: bool) -> None:
    assert (refusal(address, allow_private=False) is not None) is refused


@pytest.mark.parametrize(
    ("value", "unit", "seconds"),
    [
        (1764111111, 1.0, 1764111111.0),
        ("1764111111", 1.0, 1764111111.0),
        (1764111111250, MILLISECONDS, 1764111111.25),
        ("nan", 1.0, 0.0),
        (math.inf, 1.0, 0.0),
        (-math.inf, 1.0, 0.0),
        (1e14, 1.0, 0.0),  # year 3170843
        (-5, 1.0, 0.0),
        (True, 1.0, 0.0),
        (None, 1.0, 0.0),
        ([1], 1.0, 0.0),
        ("²", 1.0, 0.0),
        (10**400, 1.0, 0.0),  # too large for a float
        (LATEST, 1.0, LATEST),
    ],
)
def test_epoch_seconds_are_always_a_date(value: Any, unit: float, seconds: float) -> None:
    assert epoch_seconds(value, unit=unit) == seconds


@pytest.mark.parametrize(
    ("component", "ok"),
    [
        ({"type": "button", "sub_type": "quick_reply", "index": 0}, True),
        ({"type": "button", "sub_type": "quick_reply", "index": "9"}, True),
        ({"type": "button", "sub_type": "quick_reply", "index": "²"}, False),
        ({"type": "button", "sub_type": "quick_reply", "index": "10"}, False),
        ({"type": "button", "sub_type": "quick_reply", "index": True}, False),
        ({"type": ["body"]}, False),
        ({"type": {"a": 1}}, False),
        ({"type": "button", "sub_type": ["url"], "index": 0}, False),
        ({"type": "body", "parameters": [{"type": ["text"]}]}, False),
    ],
)
def test_cloud_template_shapes_never_raise_anything_else(
    component: dict[str, Any], ok: bool
) -> None:
    template = {"name": "hello", "language": "en", "components": [component]}
    if ok:
        assert cloud_template.check(template)["components"] == [component]
    else:
        with pytest.raises(cloud_template.TemplateShapeError):
            cloud_template.check(template)


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ('{{ "%.2f"|format(amount) }}', {"amount": "12.50"}),
        ("{{ items|length }}", {"items": 3}),
        ("{{ v|join(',') }}", {"v": 5}),
        ("{{ v|round }}", {"v": "1.5"}),
        ("{{ v|truncate(3) }}", {"v": 12345}),
        ("{{ a / b }}", {"a": 1, "b": 0}),
        ("{% for i in range(n) %}.{% endfor %}", {"n": 10**9}),
        ("{{ a * b }}", {"a": int("9" * 4000), "b": int("9" * 4000)}),
    ],
)
def test_any_render_failure_is_template_params_invalid(
    tmp_path: Path, text: str, params: dict[str, Any]
) -> None:
    (tmp_path / "t.txt").write_text(text)
    templates = TemplateSet.load(tmp_path)
    with pytest.raises(TemplateProblem) as problem:
        templates.render("t", params)
    assert problem.value.code == "template_params_invalid"


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f", "destination": "+5511999999999", '
        b'"text_message": "hi", "extra": {"\\ud800": 1}}',
        b'{"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f", "destination": "+5511999999999", '
        b'"text_message": "", "media": {"kind": "document", "url": "http://e.com/a", '
        b'"filename": "\\udfff"}}',
    ],
)
def test_a_lone_surrogate_anywhere_in_a_job_is_invalid_encoding(body: bytes) -> None:
    with pytest.raises(ValidationError) as error:
        parse_envelope(body)
    assert error.value.code == "invalid_encoding"


def _short(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _table(inner: bytes) -> bytes:
    return struct.pack(">I", len(inner)) + inner


def test_short_strings_that_are_not_utf8_are_replaced_not_raised() -> None:
    assert DecodingBuffer(_short(b"id-\xff")).read_short_string() == "id-\ufffd"
    table = _table(_short(b"k\xfe") + b"S" + struct.pack(">I", 1) + b"v")
    assert DecodingBuffer(table).read_table() == {"k\ufffd": b"v"}


def test_tables_nested_past_the_bound_are_cut_not_recursed() -> None:
    inner = _short(b"leaf") + b"b\x01"
    for _ in range(3000):
        inner = _short(b"t") + b"F" + _table(inner)
    decoded = DecodingBuffer(_table(inner)).read_table()
    depth = 0
    while isinstance(decoded, dict):
        decoded = decoded["t"]
        depth += 1
    assert decoded == TOO_DEEP and depth == MAX_DEPTH + 1


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # curl with the token
        ({"Origin": "http://127.0.0.1:8080", "Host": "127.0.0.1:8080"}, True),
        ({"Sec-Fetch-Site": "same-origin", "Host": "h"}, True),
        ({"Origin": "https://evil.example", "Host": "127.0.0.1:8080"}, False),
        ({"Origin": "null", "Host": "127.0.0.1:8080"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
    ],
)
def test_state_changes_from_another_site_are_refused(
    headers: dict[str, str], allowed: bool
) -> None:
    assert same_origin(headers) is allowed


def test_a_publish_time_in_the_future_counts_as_now() -> None:
    now = 1_764_000_000.0
    future = now * 1000  # milliseconds sent as seconds
    when = deadline(
        expires_at=None, ttl_seconds=60, headers={}, published_at=future, received_at=now
    )
    assert when == now + 60


def test_a_redirect_from_the_webhook_receiver_is_never_success() -> None:
    assert redirect(301) and redirect(308) and not redirect(200) and not redirect(404)
    assert not transient(302)  # retried only REDIRECT_ATTEMPTS times, then rejected
    assert REDIRECT_ATTEMPTS >= 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-31T23:59:60Z", "2027-01-01T00:00:00+00:00"),  # a leap second
        ("2026-12-05T10:00:00+02:00", "2026-12-05T10:00:00+02:00"),
        ("2026-12-05t10:00:00.123456789z", "2026-12-05T10:00:00.123456+00:00"),
        ("2026-12-05", None),  # a date alone
        ("2026-W49-1T10:00:00Z", None),  # an ISO week date
        ("20261205T100000Z", None),  # ISO basic format
        ("2026-02-30T10:00:00Z", None),
        ("2026-12-05T10:00:00", None),  # no offset
    ],
)
def test_send_at_is_rfc_3339_exactly(value: str, expected: str | None) -> None:
    from wa_trio.core.envelope import _instant

    if expected is None:
        with pytest.raises(ValidationError):
            _instant(value, "invalid_schedule")
    else:
        when = _instant(value, "invalid_schedule")
        assert when is not None and when.isoformat() == expected


@pytest.mark.parametrize(
    ("accounts", "soft", "hard", "raise_to", "refused"),
    [
        (1, 1024, 4096, None, False),
        (200, 1024, 1_048_576, 64 + 200 * 24, False),
        (200, 1024, 4096, None, True),
        (200, resource.RLIM_INFINITY, resource.RLIM_INFINITY, None, False),
        (200, 1024, resource.RLIM_INFINITY, 64 + 200 * 24, False),
    ],
)
def test_accounts_past_the_open_files_limit_are_one_line(
    accounts: int, soft: int, hard: int, raise_to: int | None, refused: bool
) -> None:
    planned, refusal = fd_plan(accounts, soft, hard)
    assert planned == raise_to
    assert (refusal is not None) is refused
    if refusal is not None:
        assert "\n" not in refusal and "ulimit" in refusal
