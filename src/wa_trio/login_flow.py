"""``wa-trio login``: run only the WhatsApp login flow, then exit (the CLI side of linking)."""

from __future__ import annotations

import sys

import trio

from wa_trio.config import Settings
from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState


async def run_login(settings: Settings, wait_seconds: float) -> bool:
    """Link the account; True once linked within ``wait_seconds``."""
    from wa_trio.transport.neonize import NeonizeTransport

    transport = NeonizeTransport(settings, Redactor(settings.production))
    linked = False
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        with trio.move_on_after(wait_seconds):
            await transport.wait_connected()
            linked = True
        nursery.cancel_scope.cancel()
    redactor = transport.redactor
    if linked:
        who = transport.login.linked_as or "the account"
        print(
            f"wa-trio: linked as {redactor.phone(who)}; session in {settings.session_db}",
            file=sys.stderr,
        )
    elif transport.login.qr_count == 0 and transport.state is not ConnectionState.LOGGED_OUT:
        print(
            f"wa-trio: not linked within {wait_seconds:g}s: WhatsApp was unreachable "
            f"({transport.connect_attempts} connection attempts, no login code received); "
            "check the network or WHATSAPP_PROXY",
            file=sys.stderr,
        )
    else:
        print(f"wa-trio: not linked within {wait_seconds:g}s", file=sys.stderr)
    return linked
