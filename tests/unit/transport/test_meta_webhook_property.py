"""Issue 26: any signed JSON Meta could send ends at the webhook's boundary: an answer, never an
exception, and every receipt and inbound message it hands on carries a time ``datetime`` can
represent (the status task and the bus turn them into dates, where a raise ended the worker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from wa_trio.metrics import Metrics
from wa_trio.transport.cloud_api.webhook import MetaWebhook, signature
from wa_trio.transport.inbound import InboundMessage, as_event
from wa_trio.transport.receipts import ReceiptInfo

SECRET = "meta-app-secret-0123456789"

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()  # NaN and infinities included: Python's json writes and reads them
    | st.text(max_size=20)
    | st.sampled_from(["nan", "inf", "1e14", "-1", "1764111111", "²"])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def _item(fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**fields, **extra}


_status = st.builds(
    _item,
    st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=20),
            "status": st.sampled_from(["delivered", "read", "failed", "sent", "x"]),
        },
        optional={"timestamp": _json, "errors": _json},
    ),
    st.dictionaries(st.text(max_size=8), _json, max_size=2),
)
_message = st.builds(
    _item,
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=20), "from": _json},
        optional={
            "type": st.sampled_from(["text", "button", "image", "audio", "contacts", "other"])
            | _json,
            "timestamp": _json,
            "text": _json,
            "image": _json,
            "audio": _json,
            "button": _json,
            "context": _json,
        },
    ),
    st.dictionaries(st.text(max_size=8), _json, max_size=2),
)
_notification = st.one_of(
    _json,
    st.builds(
        lambda statuses, messages: {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"value": {"statuses": statuses, "messages": messages}}]}],
        },
        st.lists(_status | _json, max_size=4),
        st.lists(_message | _json, max_size=4),
    ),
)


@given(_notification)
def test_any_signed_notification_is_answered_and_its_times_are_dates(payload: Any) -> None:
    receipts: list[ReceiptInfo] = []
    inbound: list[InboundMessage] = []
    hook = MetaWebhook(
        SECRET, "verify-token-0123", Metrics("q", "q.dlq"), receipts.append, inbound.append
    )
    body = json.dumps(payload).encode()
    assert hook.receive(body, signature(SECRET, body)) in {200, 400}
    for receipt in receipts:
        if receipt.timestamp:
            datetime.fromtimestamp(receipt.timestamp, UTC)  # what the status task does
    for message in inbound:
        json.dumps(as_event(message))  # what the bus publishes


def test_a_consumer_that_raises_on_one_item_does_not_drop_the_others() -> None:
    metrics = Metrics("q", "q.dlq")
    got: list[str] = []

    def picky(receipt: ReceiptInfo) -> None:
        if receipt.message_ids == ("bad",):
            raise ValueError("a consumer's bug")
        got.append(receipt.message_ids[0])

    hook = MetaWebhook(SECRET, "verify-token-0123", metrics, picky)
    statuses = [{"id": i, "status": "delivered", "timestamp": "1"} for i in ("a", "bad", "b")]
    body = json.dumps({"entry": [{"changes": [{"value": {"statuses": statuses}}]}]}).encode()
    assert hook.receive(body, signature(SECRET, body)) == 200
    assert got == ["a", "b"]
    contained = metrics.registry.get_sample_value(
        "wa_trio_contained_errors_total", {"boundary": "webhook_item"}
    )
    assert contained == 1
