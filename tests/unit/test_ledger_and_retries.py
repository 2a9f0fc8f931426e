from __future__ import annotations

import struct
from decimal import Decimal
from pathlib import Path

import pytest

from wa_trio.amqp_fixes import _read_field_value, apply, sanitize_headers
from wa_trio.ledger import Decision, Ledger, decide
from wa_trio.policy import delay_label, retry_delay


@pytest.mark.parametrize(
    ("state", "ambiguous", "decision"),
    [
        (None, "resend", Decision.SEND),
        ("failed", "resend", Decision.SEND),
        ("sent", "resend", Decision.DUPLICATE),
        ("sent", "skip", Decision.DUPLICATE),
        ("sending", "resend", Decision.AMBIGUOUS_RESEND),
        ("sending", "skip", Decision.AMBIGUOUS_SKIP),
    ],
)
def test_decide(state: str | None, ambiguous: str, decision: Decision) -> None:
    assert decide(state, ambiguous=ambiguous) is decision


def test_ledger_records_survive_reopen_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    assert ledger.begin("a", check=True) is None
    ledger.mark("a", "sent", "WA1")
    assert ledger.begin("b", check=True) is None  # left in "sending": a crash
    ledger.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ledger = Ledger(path)
    assert ledger.begin("a", check=True) == "sent"
    assert ledger.get("a").whatsapp_id == "WA1"  # type: ignore[union-attr]
    assert ledger.begin("b", check=True) == "sending"
    assert ledger.begin("b", check=False) is None  # unchecked: first delivery without id
    assert ledger.count("sending") == 1
    assert ledger.prune(older_than=3600) == 0
    assert ledger.prune(older_than=-1) == 2
    assert ledger.get("a") is None
    ledger.close()


def test_retry_schedule() -> None:
    schedule = (5.0, 30.0, 120.0)
    assert [retry_delay(schedule, n) for n in range(4)] == [5.0, 30.0, 120.0, None]
    assert retry_delay(schedule, -3) == 5.0
    assert [delay_label(d) for d in (5, 120, 0.25, 1.5)] == ["5s", "120s", "250ms", "1500ms"]


def _field(kind: bytes, payload: bytes) -> bytes:
    return kind + payload


def _long_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_array_and_decimal_fields_decode() -> None:
    from serena.utils.buffer import DecodingBuffer

    apply()
    table_body = b"\x05count" + b"l" + struct.pack(">q", 3)
    array = (
        b"F" + _long_string(table_body) + b"S" + _long_string(b"hi") + b"I" + struct.pack(">i", -7)
    )
    raw = _field(b"A", _long_string(array))
    assert _read_field_value(DecodingBuffer(raw)) == [{"count": 3}, b"hi", -7]
    raw = _field(b"D", b"\x02" + struct.pack(">i", 12345))
    assert _read_field_value(DecodingBuffer(raw)) == Decimal("123.45")
    for kind, payload, value in [
        (b"t", b"\x01", True),
        (b"V", b"", None),
        (b"d", struct.pack(">d", 1.5), 1.5),
        (b"s", struct.pack(">h", -2), -2),
    ]:
        assert _read_field_value(DecodingBuffer(kind + payload)) == value


def test_sanitize_headers_keeps_what_serena_encodes() -> None:
    headers = {
        "x-death": [{"count": 1}],
        "tags": ["a", "b"],
        "n": 1,
        "nested": {"l": [1]},
        "d": Decimal("1.5"),
    }
    clean = sanitize_headers(headers)
    assert "x-death" not in clean
    assert clean["tags"] == '["a", "b"]'
    assert clean["nested"] == {"l": "[1]"}
    assert clean["n"] == 1
    assert clean["d"] == '"1.5"'
