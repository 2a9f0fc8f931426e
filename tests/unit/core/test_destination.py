"""Destinations in the forms publishers write them (issue 30): WAHA's and GOWA's JIDs and bare
international digits are the same number; bare digits that name no valid international number
are refused as ambiguous (core/destination.py)."""

from __future__ import annotations

import pytest

from wa_trio.core.destination import DestinationProblem, e164
from wa_trio.core.envelope import parse_envelope
from wa_trio.web.api import job_schema

SAME = "+5511999999999"


@pytest.mark.parametrize(
    "raw",
    [
        "+55 (11) 99999-9999",
        "5511999999999",
        "55 11 99999 9999",
        "5511999999999@s.whatsapp.net",
        " 5511999999999@c.us ",
    ],
)
def test_the_forms_of_one_number(raw: str) -> None:
    assert e164(raw) == SAME


@pytest.mark.parametrize(
    "raw",
    [
        "11999999999",  # Brazil's national form: which country?
        "011999999999",  # a trunk 0
        "123@s.whatsapp.net",  # too short for a JID of a number
        "5511999999999@lid",  # a LID is no phone number
        "5511999999999@s.whatsapp.net.evil",
        "+55 11 99999-9999 x",
    ],
)
def test_what_stays_refused(raw: str) -> None:
    with pytest.raises(DestinationProblem):
        e164(raw)


def test_the_job_schema_accepts_the_new_forms() -> None:
    import jsonschema

    schema = job_schema()
    for raw in ("5511999999999", "5511999999999@s.whatsapp.net", "5511999999999@c.us"):
        body = {"user_id": "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f", "destination": raw}
        body["text_message"] = "hi"
        jsonschema.validate(body, schema)
        import json

        assert parse_envelope(json.dumps(body).encode()).destination == SAME
