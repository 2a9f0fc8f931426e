from __future__ import annotations

import struct
from decimal import Decimal
from pathlib import Path

import pytest

from wa_trio.bus._serena_patch import _read_field_value, apply
from wa_trio.core.headers import encodable
from wa_trio.core.outcome import Found
from wa_trio.core.retry import delay_label, retry_delay
from wa_trio.stores.ledger import Begin, LedgerError, Mark
from wa_trio.stores.sqlite.ledger import Ledger


def _state(found: Found | None) -> str | None:
    return None if found is None else found.state


def test_ledger_records_survive_reopen_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    assert ledger.begin("a", check=True) is None
    ledger.mark("a", "sent", "WA1")
    assert ledger.begin("b", check=True) is None  # left in "sending": a crash
    ledger.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    ledger = Ledger(path)
    assert _state(ledger.begin("a", check=True)) == "sent"
    assert ledger.get("a").whatsapp_id == "WA1"  # type: ignore[union-attr]
    assert _state(ledger.begin("b", check=True)) == "sending"
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


def test_step_commits_the_previous_outcome_and_the_next_begin_together(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.step([], [Begin("a", True, "h1")])
    found = ledger.step([Mark("a", "sent", "WA1", "u", "h1")], [Begin("a", True, "h1")])
    assert found == [Found("sent", "h1")]  # the mark is visible to the begin of the same step
    # a reused message_id with another body: reported with the first body's hash, row kept
    assert ledger.step([], [Begin("a", True, "h2")]) == [Found("sent", "h1")]
    assert ledger.get("a").whatsapp_id == "WA1"  # type: ignore[union-attr]
    ledger.close()


def test_a_ledger_of_the_previous_schema_gains_body_hashes(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE sends (key TEXT PRIMARY KEY, state TEXT NOT NULL, whatsapp_id TEXT, "
        "updated_at REAL NOT NULL, user_id TEXT)"
    )
    db.execute("INSERT INTO sends VALUES ('old', 'sent', 'W', 1e12, NULL)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.begin("old", check=True, body_hash="h") == Found("sent", None)
    ledger.close()


def test_a_full_disk_raises_the_real_error_not_a_failed_rollback(tmp_path: Path) -> None:
    """SQLITE_FULL (max_page_count stands in for a full disk) comes out as LedgerError with
    SQLite's own text; before, the failed ROLLBACK masked it."""
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.limit_pages(1)
    with pytest.raises(LedgerError, match="full"):
        ledger.step([], [Begin(f"k{i}" * 200, False) for i in range(200)])
    ledger.close()


def test_encodable_headers_keep_what_serena_encodes() -> None:
    headers = {
        "x-death": [{"count": 1}],
        "tags": ["a", "b"],
        "n": 1,
        "nested": {"l": [1]},
        "d": Decimal("1.5"),
    }
    clean, notes = encodable(headers)
    assert notes == []
    assert "x-death" not in clean
    assert clean["tags"] == '["a", "b"]'
    assert clean["nested"] == {"l": "[1]"}
    assert clean["n"] == 1
    assert clean["d"] == '"1.5"'
