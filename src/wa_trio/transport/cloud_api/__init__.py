"""The Cloud API transport: Meta's official WhatsApp Business Platform over HTTPS.

- ``transport.py``: ``CloudApiTransport`` (the number's check, sends, account stops);
- ``meta_errors.py``: Meta's error codes -> our codes and retry classes (pure, one table);
- ``messages.py``: request bodies and answers (pure).

Webhooks in (statuses, the subscription handshake) are ``webhook.py``'s, served by
``web/app.py``.
"""

from __future__ import annotations

from wa_trio.transport.cloud_api.transport import CloudApiTransport

__all__ = ["CloudApiTransport"]
