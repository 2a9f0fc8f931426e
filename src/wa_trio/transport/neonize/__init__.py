"""The neonize transport: the only package that imports neonize.

- ``transport.py``: ``NeonizeTransport`` (threads, trio bridge, watchdog, states);
- ``login.py``: driving a login (QR codes and their freshness, the pair code);
- ``handlers.py``: the handlers on Go threads and their bulkheads into trio;
- ``sending.py``: ``NeonizeSender`` (number and group look-ups, media built once, typing, sends);
- ``events.py``: neonize event objects -> state-machine signals and receipts (pure);
- ``library.py``: the bundled library guard, the client factory, log routing, the error
  boundary for neonize calls.

Nothing is imported eagerly here (PEP 562): importing the pure ``events`` module loads no
trio, no neonize and no sqlite3 (tests/unit/test_architecture.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "TransportError": "wa_trio.core.errors",
    "EVENT_NAMES": "wa_trio.transport.neonize.events",
    "receipt_of": "wa_trio.transport.neonize.events",
    "signal_of": "wa_trio.transport.neonize.events",
    "bundled_library": "wa_trio.transport.neonize.library",
    "check_bundled_library": "wa_trio.transport.neonize.library",
    "new_client": "wa_trio.transport.neonize.library",
    "prepare_session_dir": "wa_trio.transport.neonize.library",
    "NeonizeStatistics": "wa_trio.transport.neonize.transport",
    "NeonizeTransport": "wa_trio.transport.neonize.transport",
    "ReceiptInfo": "wa_trio.transport.receipts",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


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
