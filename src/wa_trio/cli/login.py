"""``wa-trio login``: run only the WhatsApp login flow, then exit (the CLI side of linking)."""

from __future__ import annotations

import contextlib
import sys

import trio

from wa_trio.config.redact import redact_url
from wa_trio.config.settings import Settings
from wa_trio.log import Redactor
from wa_trio.stores import open as stores
from wa_trio.transport import ConnectionState


async def run_login(settings: Settings, wait_seconds: float) -> bool:
    """Link the account; True once linked within ``wait_seconds``. The session must be free:
    a running worker holds it (its /login?account=NAME links it there).

    Raises:
        StartupError: a worker holds the account's session (or lease).
    """
    from wa_trio.transport.neonize import NeonizeTransport

    with _session_held(settings):
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
        where = redact_url(settings.session_database)
        print(f"wa-trio: linked as {redactor.phone(who)}; session in {where}", file=sys.stderr)
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


def _session_held(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Hold the account's session while linking it (``stores.open.claimed``)."""
    account = settings.account_name
    return stores.claimed(
        settings,
        held=f"a running worker holds account {account}; link it there "
        f"(/login?account={account}) or stop it first",
    )
