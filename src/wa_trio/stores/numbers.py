"""Number -> "is it on WhatsApp" cache (sqlite3, blocking: call it from a worker thread).

``is_on_whatsapp`` is a round trip to WhatsApp and a signal of automation when repeated; the
answer rarely changes, so it is kept for a week (``NUMBER_CACHE_TTL`` of the neonize transport).
The look-up only answers "is on WhatsApp": the JID it returns may be the contact's LID
(``<id>@lid``), which is not a phone number, so we always send to the phone-number JID we asked
about and whatsmeow maps it to the LID itself. Schema version 2 dropped the rows of version 1,
which could hold a LID as the number to send to.
"""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Resolution:
    number: str  # E.164
    on_whatsapp: bool
    jid_user: str  # the phone number's digits, the JID user we send to ("" when not on WhatsApp)
    checked_at: float


class Numbers(Protocol):
    """This SQLite cache, or ``postgres.PgNumberCache`` (shared by every replica)."""

    def get(self, number: str, now: float | None = None) -> Resolution | None: ...
    def put(self, resolution: Resolution) -> None: ...
    def close(self) -> None: ...
