"""A job's identity and the headers of its copies: bounded and encodable, whatever the
publisher sent (pure, no broker)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from serena.enums import ClassID
from serena.payloads.header import BasicHeader, serialise_basic_header

from wa_trio.core.headers import encodable
from wa_trio.core.job import MAX_KEY_BYTES, job_key, retry_count, trace_id_of


def test_short_message_ids_are_the_key() -> None:
    assert job_key("order-1", b"{}") == "order-1"


def test_long_message_ids_are_hashed_to_a_bounded_key() -> None:
    long_id = "m" * 250
    key = job_key(long_id, b"{}")
    assert key.startswith("mid-sha256:")
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert key == job_key(long_id, b"other body")  # still the message id's identity
    # a status event's message id is "<key>:<status>": it must fit a short string
    assert len(f"{key}:delivered".encode()) <= 255


def test_without_message_id_the_body_is_the_key() -> None:
    assert job_key(None, b"a") == job_key("", b"a") != job_key(None, b"b")


def test_retry_count_reads_garbage_as_zero() -> None:
    garbage: list[object] = ["abc", None, [], float("inf"), float("nan"), True, -3]
    for value in garbage:
        assert retry_count({"x-retry-count": value}) == 0
    assert retry_count({"x-retry-count": "4"}) == 4
    assert retry_count({"x-retry-count": 10**30}) == 1_000_000


def test_trace_id_is_bounded_text() -> None:
    assert trace_id_of({"trace_id": b"t" * 500}, None) == "t" * 128
    assert trace_id_of({}, "corr") == "corr"
    assert trace_id_of({}, None) is None


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=300), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=300), _values, max_size=6))
def test_encodable_headers_always_encode(headers: dict[str, Any]) -> None:
    clean, _notes = encodable(headers)
    serialise_basic_header(ClassID.BASIC, 10, BasicHeader(headers=clean))  # never raises
