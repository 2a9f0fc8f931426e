"""The Cloud API's pure parts: Meta's error table, request bodies, template shapes, webhook
signatures and status parsing, the reset hint on retries, and the settings (issue 17)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from wa_trio.config.settings import CLOUD_API_DEFAULT_URL, ConfigError, Settings
from wa_trio.core.cloud_template import TemplateShapeError, check
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.errors import SendError
from wa_trio.core.outcome import DeadLetter, Retry, on_send_failure
from wa_trio.metrics import Metrics
from wa_trio.transport import OutgoingMessage
from wa_trio.transport.cloud_api.messages import message_body, message_id
from wa_trio.transport.cloud_api.meta_errors import CODES, TABLE, classify, usage_hint
from wa_trio.transport.cloud_api.webhook import MetaWebhook, parse, signature, signed
from wa_trio.transport.receipts import ReceiptInfo

USER = "6f1c6a5e-4a3b-4c2d-9e8f-7a6b5c4d3e2f"


def _error(code: int, details: str = "why") -> dict[str, Any]:
    return {
        "error": {
            "message": f"(#{code}) title",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "A1",
        }
    }


@pytest.mark.parametrize(
    ("status", "meta", "code", "transient", "stops"),
    [
        (401, 190, "cloud_token_invalid", True, True),
        (401, 0, "cloud_token_invalid", True, True),
        (403, 10, "cloud_permission_denied", True, True),
        (403, 368, "cloud_account_restricted", True, True),
        (400, 130429, "cloud_rate_limited", True, False),
        (400, 131048, "cloud_rate_limited", True, False),
        (400, 131056, "cloud_rate_limited", True, False),
        (400, 80007, "cloud_rate_limited", True, False),
        (400, 131047, "outside_customer_window", False, False),
        (400, 131026, "undeliverable", False, False),
        (400, 100, "invalid_parameter", False, False),
        (400, 131009, "invalid_parameter", False, False),
        (400, 132001, "cloud_template_rejected", False, False),
        (500, 131000, "cloud_api_unavailable", True, False),
        (503, 2, "cloud_api_unavailable", True, False),
    ],
)
def test_meta_codes_map_to_one_code_and_retry_class(
    status: int, meta: int, code: str, transient: bool, stops: bool
) -> None:
    failure = classify(status, _error(meta, "the details"))
    assert (failure.rule.code, failure.rule.transient, failure.rule.stops_account) == (
        code,
        transient,
        stops,
    )
    assert failure.meta_code == meta
    assert failure.detail == "the details"


@pytest.mark.parametrize(
    ("status", "body", "code", "transient"),
    [
        (502, b"<html>bad gateway</html>", "cloud_api_unavailable", True),
        (500, None, "cloud_api_unavailable", True),
        (429, None, "cloud_rate_limited", True),
        (404, {"error": {"code": 987654}}, "cloud_api_rejected", False),
        (400, {"error": "a string"}, "cloud_api_rejected", False),
        (400, {"error": {"code": True}}, "cloud_api_rejected", False),
    ],
)
def test_unknown_codes_fall_back_on_the_http_status(
    status: int, body: Any, code: str, transient: bool
) -> None:
    failure = classify(status, body)
    assert (failure.rule.code, failure.rule.transient) == (code, transient)


def test_every_code_of_the_table_is_listed_and_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "cloud-api.md").read_text()
    assert {rule.code for rule in TABLE.values()} <= CODES
    for code in CODES:
        assert f"`{code}`" in doc, code
    for meta in (190, 130429, 131047, 131026, 131048, 131056):
        assert f"| {meta} " in doc or f"{meta}," in doc or f" {meta} " in doc, meta


def test_reset_hints_come_from_retry_after_or_the_usage_header() -> None:
    usage = json.dumps(
        {"123": [{"type": "whatsapp", "estimated_time_to_regain_access": 2}, {"x": 1}]}
    )
    failure = classify(400, _error(130429), {"x-business-use-case-usage": usage})
    assert failure.retry_after == 120.0
    assert classify(400, _error(130429), {}, retry_after=7.0).retry_after == 7.0
    assert classify(400, _error(131047), {"x-business-use-case-usage": usage}).retry_after is None
    assert usage_hint("not json") is None
    assert usage_hint(json.dumps({"1": [{"estimated_time_to_regain_access": 0}]})) is None
    assert usage_hint(None) is None


def test_a_reset_hint_moves_the_retry_to_a_later_step_of_the_ladder() -> None:
    ladder = (5.0, 30.0, 120.0, 600.0)
    plain = SendError("busy", code="cloud_rate_limited")
    assert on_send_failure(plain, ambiguous_policy="resend", retries_done=0, schedule=ladder) == (
        Retry(5.0, 1)
    )
    hinted = SendError("busy", code="cloud_rate_limited", retry_after=60.0)
    assert on_send_failure(hinted, ambiguous_policy="resend", retries_done=0, schedule=ladder) == (
        Retry(120.0, 1)
    )
    beyond = SendError("busy", code="cloud_rate_limited", retry_after=9999.0)
    assert on_send_failure(beyond, ambiguous_policy="resend", retries_done=1, schedule=ladder) == (
        Retry(600.0, 2)
    )
    spent = on_send_failure(hinted, ambiguous_policy="resend", retries_done=4, schedule=ladder)
    assert isinstance(spent, DeadLetter) and spent.code == "retries_exhausted"


def test_text_and_template_bodies() -> None:
    text = OutgoingMessage("+5511999990000", "Olá", USER, "k1")
    assert message_body(text) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "5511999990000",
        "type": "text",
        "text": {"body": "Olá", "preview_url": False},
    }
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]
    template = OutgoingMessage(
        "+5511999990000",
        "",
        USER,
        "k2",
        cloud_template={"name": "order_shipped", "language": "pt_BR", "components": components},
    )
    body = message_body(template)
    assert body["type"] == "template" and "text" not in body
    assert body["template"] == {
        "name": "order_shipped",
        "language": {"code": "pt_BR"},
        "components": components,
    }


def test_message_id_from_the_success_answer() -> None:
    ok = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "5511999990000", "wa_id": "5511999990000"}],
        "messages": [{"id": "wamid.HBgLNTUxMTk5OTk5MDAwMBUCABEYEjA="}],
    }
    assert message_id(ok) == "wamid.HBgLNTUxMTk5OTk5MDAwMBUCABEYEjA="
    bad: Any
    for bad in (None, [], {"messages": []}, {"messages": [{"id": 3}]}, {"messages": ["x"]}):
        assert message_id(bad) is None


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("hello", "must be an object"),
        ({"name": "Hello World", "language": "en"}, "name must be"),
        ({"name": "hello", "language": "english"}, "language must be"),
        ({"name": "hello", "language": "en", "extra": 1}, "may hold only"),
        ({"name": "hello", "language": "en", "components": {}}, "components must be a list"),
        ({"name": "hello", "language": "en", "components": [{"type": "middle"}]}, ".type"),
        (
            {"name": "h", "language": "en", "components": [{"type": "button", "index": 0}]},
            "sub_type",
        ),
        (
            {
                "name": "h",
                "language": "en",
                "components": [{"type": "button", "sub_type": "url", "index": 11}],
            },
            "index",
        ),
        (
            {"name": "h", "language": "en", "components": [{"type": "body", "parameters": [1]}]},
            "parameters[0].type",
        ),
        (
            {
                "name": "h",
                "language": "en",
                "components": [{"type": "body", "parameters": [{"type": "text", "text": 5}]}],
            },
            "text must be a string",
        ),
        (
            {
                "name": "h",
                "language": "en",
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "x" * 20000}]}
                ],
            },
            "larger than",
        ),
    ],
)
def test_malformed_templates_are_refused_with_the_reason(template: Any, reason: str) -> None:
    with pytest.raises(TemplateShapeError) as caught:
        check(template)
    assert reason in caught.value.reason


def test_a_job_with_a_cloud_template() -> None:
    job = {
        "user_id": USER,
        "destination": "+5511999990000",
        "cloud_template": {
            "name": "otp_code",
            "language": "en_US",
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "123456"}]},
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": "123456"}],
                },
            ],
        },
    }
    envelope = parse_envelope(json.dumps(job).encode(), cloud_templates=True)
    assert envelope.cloud_template is not None
    assert envelope.cloud_template["name"] == "otp_code" and envelope.text_message == ""
    with pytest.raises(ValidationError) as unsupported:
        parse_envelope(json.dumps(job).encode(), cloud_templates=False)
    assert unsupported.value.code == "cloud_template_unsupported"
    # beside a text (the form a neonize account sends: the pool and WHATSAPP_FALLBACK) it is
    # kept on any transport; an empty text is no text
    for allowed in (True, False):
        both = parse_envelope(
            json.dumps({**job, "text_message": "hi"}).encode(), cloud_templates=allowed
        )
        assert both.text_message == "hi" and both.cloud_template is not None
    with pytest.raises(ValidationError) as empty:
        parse_envelope(json.dumps({**job, "text_message": ""}).encode(), cloud_templates=False)
    assert empty.value.code == "cloud_template_unsupported"
    with pytest.raises(ValidationError) as three:
        three_forms = {**job, "text_message": "hi", "template": "welcome"}
        parse_envelope(json.dumps(three_forms).encode(), cloud_templates=True)
    assert three.value.code == "wrong_type"
    bad = {**job, "cloud_template": {"name": "otp_code"}}
    with pytest.raises(ValidationError) as invalid:
        parse_envelope(json.dumps(bad).encode(), cloud_templates=True)
    assert invalid.value.code == "cloud_template_invalid"


SECRET = "app-secret-0123456789"


def test_signatures_are_checked_on_the_raw_bytes() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    header = signature(SECRET, body)
    assert header.startswith("sha256=") and signed(SECRET, body, header)
    assert not signed(SECRET, body + b" ", header)
    changed = bytearray(body)
    changed[3] ^= 1
    assert not signed(SECRET, bytes(changed), header)
    assert not signed("another-secret-0123456", body, header)
    assert not signed(SECRET, body, None) and not signed(SECRET, body, "")
    assert not signed(SECRET, body, "sha256=" + "0" * 64)


def notification(statuses: list[Any], messages: int = 0) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp", "statuses": statuses}
    if messages:
        value["messages"] = [{"id": f"in{n}", "type": "text"} for n in range(messages)]
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }


def test_statuses_become_receipts() -> None:
    payload = notification(
        [
            {"id": "wamid.1", "status": "delivered", "timestamp": "1764111111"},
            {"id": "wamid.2", "status": "read", "timestamp": "1764111112"},
            {"id": "wamid.3", "status": "sent", "timestamp": "1764111110"},
            {
                "id": "wamid.4",
                "status": "failed",
                "timestamp": "1764111113",
                "errors": [{"code": 131047, "title": "Re-engagement message"}],
            },
            {"id": "wamid.5", "status": "failed", "timestamp": "x", "errors": []},
            {"id": 7, "status": "read"},
            "garbage",
        ],
        messages=2,
    )
    parsed = parse(payload)
    assert parsed.receipts == [
        ReceiptInfo(("wamid.1",), "delivered", 1764111111.0),
        ReceiptInfo(("wamid.2",), "read", 1764111112.0),
        ReceiptInfo(("wamid.4",), "failed", 1764111113.0, code="outside_customer_window"),
        ReceiptInfo(("wamid.5",), "failed", 0.0, code="cloud_api_rejected"),
    ]
    assert (parsed.sent, len(parsed.inbound)) == (1, 2)
    assert parse({"entry": "nope"}).receipts == [] and parse([1, 2]).inbound == []


def test_the_webhook_refuses_before_parsing_and_counts() -> None:
    metrics = Metrics("q", "q.dlq")
    got: list[ReceiptInfo] = []
    hook = MetaWebhook(SECRET, "verify-token-0123", metrics, got.append)

    def count(result: str) -> float:
        sample = metrics.registry.get_sample_value(
            "whatsapp_cloud_webhook_requests_total", {"result": result}
        )
        return sample or 0.0

    assert hook.handshake("subscribe", "verify-token-0123", "1158201444") == (200, "1158201444")
    assert hook.handshake("subscribe", "wrong", "1158201444")[0] == 403
    assert hook.handshake("unsubscribe", "verify-token-0123", "1")[0] == 403
    assert hook.handshake(None, None, None)[0] == 403
    body = json.dumps(notification([{"id": "wamid.1", "status": "read"}])).encode()
    assert hook.receive(body, None) == 403
    assert hook.receive(body, signature("wrong-secret-000000", body)) == 403
    assert hook.receive(b"{not json", signature(SECRET, b"{not json")) == 400
    assert got == []
    assert hook.receive(body, signature(SECRET, body)) == 200
    assert [r.message_ids for r in got] == [("wamid.1",)]
    assert (count("unsigned"), count("bad_signature"), count("bad_json"), count("accepted")) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert (count("handshake"), count("handshake_refused")) == (1.0, 3.0)


def test_cloud_api_settings_are_required_and_secret(
    make_env: Callable[..., dict[str, str]],
) -> None:
    full = {
        "WHATSAPP_TRANSPORT": "cloud-api",
        "WHATSAPP_CLOUD_PHONE_NUMBER_ID": "106540352242922",
        "WHATSAPP_CLOUD_ACCESS_TOKEN": "EAAtoken-secret-value",
        "WHATSAPP_CLOUD_APP_SECRET": "app-secret-value",
        "WHATSAPP_CLOUD_VERIFY_TOKEN": "verify-token-value",
    }
    settings = Settings.from_env(make_env(**full))
    assert settings.cloud_api_url == CLOUD_API_DEFAULT_URL
    shown = settings.as_redacted_dict()
    for name in ("ACCESS_TOKEN", "APP_SECRET", "VERIFY_TOKEN"):
        assert shown[f"WHATSAPP_CLOUD_{name}"] == "***"
    assert "EAAtoken" not in repr(settings)
    for missing in (
        "WHATSAPP_CLOUD_PHONE_NUMBER_ID",
        "WHATSAPP_CLOUD_ACCESS_TOKEN",
        "WHATSAPP_CLOUD_APP_SECRET",
        "WHATSAPP_CLOUD_VERIFY_TOKEN",
    ):
        env = make_env(**{**full, missing: ""})
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert missing in str(caught.value) and "\n" not in str(caught.value)
    for variable, value in (
        ("WHATSAPP_CLOUD_PHONE_NUMBER_ID", "+55 11"),
        ("WHATSAPP_CLOUD_API_URL", "ftp://graph"),
        ("WHATSAPP_CLOUD_ACCESS_TOKEN", "has space"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(make_env(**{**full, variable: value}))
        assert variable in str(caught.value)
        assert "has space" not in str(caught.value)
