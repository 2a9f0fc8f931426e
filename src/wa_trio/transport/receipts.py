"""Message receipts as the rest of wa-trio sees them (no neonize import)."""

from __future__ import annotations

import attrs


@attrs.frozen
class ReceiptInfo:
    """A delivery/read receipt for messages we sent (for status events)."""

    message_ids: tuple[str, ...]
    kind: str  # delivered | read | played | failed (Cloud API) | other
    timestamp: float
    code: str | None = None  # failed: our code for the peer's reason


#: neonize Receipt.ReceiptType values we report
RECEIPT_KINDS = {1: "delivered", 4: "read", 6: "played"}
