"""The neonize transport: the only package that imports neonize.

- ``transport.py``: ``NeonizeTransport`` (threads, trio bridge, watchdog, states);
- ``sending.py``: ``NeonizeSender`` (number and group look-ups, media built once, typing, sends);
- ``events.py``: neonize event objects -> state-machine signals and receipts (pure);
- ``runtime.py``: the bundled library guard, the client factory, log routing, the error
  boundary for neonize calls.
"""

from __future__ import annotations

from wa_trio.core.errors import TransportError
from wa_trio.transport.neonize.events import EVENT_NAMES, receipt_of, signal_of
from wa_trio.transport.neonize.library import (
    bundled_library,
    check_bundled_library,
    new_client,
    prepare_session_dir,
)
from wa_trio.transport.neonize.transport import NeonizeStatistics, NeonizeTransport
from wa_trio.transport.receipts import ReceiptInfo

__all__ = [
    "EVENT_NAMES",
    "NeonizeStatistics",
    "NeonizeTransport",
    "ReceiptInfo",
    "TransportError",
    "bundled_library",
    "check_bundled_library",
    "new_client",
    "prepare_session_dir",
    "receipt_of",
    "signal_of",
]
