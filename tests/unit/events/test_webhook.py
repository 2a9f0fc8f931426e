"""Signed webhooks, pure parts and the outbox (no network)."""

from __future__ import annotations

from pathlib import Path

from wa_trio.events.status_webhook import sign, transient, verify
from wa_trio.stores.sqlite.outbox import SqliteOutbox as Outbox


def test_a_receiver_verifies_the_signature_in_constant_time_within_five_minutes() -> None:
    body = b'{"status":"sent","job_key":"k"}'
    signature = sign("s3cret-webhook-key", 1_700_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify("s3cret-webhook-key", "1700000000", signature, body, now=1_700_000_100)
    assert not verify("s3cret-webhook-key", "1700000000", signature, body + b" ", 1_700_000_100)
    assert not verify("other-key-0123456", "1700000000", signature, body, 1_700_000_100)
    assert not verify("s3cret-webhook-key", "1700000000", signature, body, 1_700_000_301)  # replay
    assert not verify("s3cret-webhook-key", "soon", signature, body, 1_700_000_000)


def test_only_429_and_5xx_are_retried() -> None:
    assert transient(429) and transient(500) and transient(503)
    assert not any(transient(code) for code in (400, 401, 403, 404, 410, 422))


def test_the_outbox_keeps_order_per_job_and_is_bounded(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "ledger.db", max_pending=3)
    try:
        assert outbox.add([("a", b"a1"), ("b", b"b1"), ("a", b"a2")], now=0.0) == 0
        first = outbox.next_due(now=1.0)
        assert first is not None and first.body == b"a1"
        outbox.later(first.id, next_at=100.0)  # a1 waits: a2 must wait behind it, b1 need not
        second = outbox.next_due(now=1.0)
        assert second is not None and second.body == b"b1"
        outbox.remove(second.id)
        assert outbox.next_due(now=1.0) is None
        assert outbox.next_due(now=100.0) is not None
        assert outbox.add([("c", b"c1"), ("d", b"d1")], now=2.0) == 1  # 4 > 3: oldest dropped
        count, oldest = outbox.stats()
        assert count == 3 and oldest == 0.0
    finally:
        outbox.close()
