"""Message receipts as the rest of wa-trio sees them (no neonize import)."""

from __future__ import annotations

import attrs


@attrs.frozen
class ReceiptInfo:
    """A delivery/read receipt for messages we sent (for status events)."""

    message_ids: tuple[str, ...]
    kind: str  # delivered | read | played | other
    timestamp: float


#: neonize Receipt.ReceiptType values we report
RECEIPT_KINDS = {1: "delivered", 4: "read", 6: "played"}
