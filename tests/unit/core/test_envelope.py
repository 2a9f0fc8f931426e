from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wa_trio.core.envelope import CODES, MAX_TEXT_CHARS, ValidationError, parse_envelope

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


def body(**fields: Any) -> bytes:
    job: dict[str, Any] = {"user_id": UID, "text_message": "Hello", "destination": "+5511999999999"}
    job.update(fields)
    return json.dumps({k: v for k, v in job.items() if v is not ...}).encode()


def code_of(raw: bytes, *, content_filter: bool = True) -> str:
    with pytest.raises(ValidationError) as info:
        parse_envelope(raw, content_filter=content_filter)
    assert info.value.code in CODES
    assert info.value.message
    return info.value.code


def test_valid_job_is_parsed_and_destination_kept_in_e164() -> None:
    env = parse_envelope(body(destination="+55 (11) 99999-9999", extra="ignored"))
    assert env.user_id == uuid.UUID(UID)
    assert env.destination == "+5511999999999"
    assert env.text_message == "Hello"


@pytest.mark.parametrize(
    ("destination", "ok"),
    [
        ("+2901234", False),  # 7 digits
        ("+29012345", True),  # 8 digits (St Helena)
        ("+491234567890123", True),  # 15 digits
        ("+4912345678901234", False),  # 16 digits
        ("5511999999999", True),  # no plus: bare international digits (issue 30)
        ("+55.11.9999.9999", True),
        ("+55 11 9999a9999", False),
        ("+99912345678", False),  # no such country code
        ("+8823456789012345", False),
        ("", False),
    ],
)
def test_destination_boundaries(destination: str, ok: bool) -> None:
    if ok:
        assert parse_envelope(body(destination=destination)).destination.startswith("+")
    else:
        assert code_of(body(destination=destination)) == "invalid_destination"


def test_text_length_is_counted_in_characters() -> None:
    assert parse_envelope(body(text_message="é" * MAX_TEXT_CHARS)).text_message
    assert parse_envelope(body(text_message="👍" * MAX_TEXT_CHARS)).text_message  # 4 bytes each
    assert code_of(body(text_message="a" * (MAX_TEXT_CHARS + 1))) == "text_too_long"
    assert code_of(body(text_message="👍" * (MAX_TEXT_CHARS + 1))) == "text_too_long"


def test_one_character_is_enough_and_empty_is_not() -> None:
    assert parse_envelope(body(text_message="k")).text_message == "k"
    assert code_of(body(text_message="")) == "empty_text"
    assert code_of(body(text_message="  \n ")) == "empty_text"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}", "invalid_encoding"),
        (b'{"user_id": "\xc3\x28"}', "invalid_encoding"),
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "wrong_type"),
        (b'"a string"', "wrong_type"),
        (b"null", "wrong_type"),
        (b"{}", "missing_field"),
    ],
)
def test_malformed_bodies(raw: bytes, code: str) -> None:
    assert code_of(raw) == code


def test_unpaired_surrogate_is_an_encoding_error() -> None:
    raw = b'{"user_id": "%s", "text_message": "\\ud800", "destination": "+5511999999999"}' % (
        UID.encode()
    )
    assert code_of(raw) == "invalid_encoding"


@pytest.mark.parametrize("field", ["user_id", "text_message", "destination"])
def test_missing_field(field: str) -> None:
    assert code_of(body(**{field: ...})) == "missing_field"


@pytest.mark.parametrize("value", [5511999999999, 1.5, True, None, ["+55"], {"a": 1}])
@pytest.mark.parametrize("field", ["user_id", "text_message", "destination"])
def test_numbers_and_others_where_strings_belong(field: str, value: Any) -> None:
    assert code_of(body(**{field: value})) == "wrong_type"


@pytest.mark.parametrize("user_id", ["", "123", "not-a-uuid", UID + "0"])
def test_invalid_user_id(user_id: str) -> None:
    assert code_of(body(user_id=user_id)) == "invalid_user_id"


def test_content_filter_can_be_switched_off() -> None:
    evil = body(text_message="<script>alert(1)</script>")
    assert code_of(evil) == "content_rejected"
    assert parse_envelope(evil, content_filter=False).text_message.startswith("<script>")


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    assert code_of(b"[" * 100_000 + b"]" * 100_000) in {"invalid_json", "wrong_type"}


@settings(deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_validation_error(raw: bytes) -> None:
    try:
        parse_envelope(raw)
    except ValidationError as error:
        assert error.code in CODES


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["user_id", "text_message", "destination", "x"]),
        st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans()),
    )
)
def test_arbitrary_objects_only_ever_raise_validation_error(obj: dict[str, Any]) -> None:
    try:
        parse_envelope(json.dumps(obj).encode())
    except ValidationError as error:
        assert error.code in CODES
