"""The /login page, rendered from the transport's ``LoginStatus`` (pure: status in, HTML out).

The only page a person looks at, at the moment it matters most: it shows the QR code (inline
SVG) or the pairing code while linking, refreshes itself every few seconds so a new QR replaces
an expired one, and says who is linked once done. Relinking after a logout is a POST (an
operator action), never a side effect of looking at the page.
"""

from __future__ import annotations

import html

import segno

from wa_trio.log import Redactor
from wa_trio.transport import ConnectionState, LoginStatus

REFRESH_SECONDS = 3


def render(status: LoginStatus, redactor: Redactor) -> str:
    state = status.state
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    if not status.linkable:
        body = (
            "<h1>Nothing to link</h1><p>This worker's transport has no device to link: "
            "dry-run never touches WhatsApp, and the Cloud API's account is its access "
            f"token (state: {html.escape(state.value)}).</p>"
        )
        refresh = ""
    elif state is ConnectionState.CONNECTED:
        who = redactor.phone(status.linked_as) if status.linked_as else "unknown"
        body = f"<h1>WhatsApp linked</h1><p>linked as {html.escape(who)}</p>"
        refresh = ""
    elif state is ConnectionState.LOGGED_OUT:
        body = (
            "<h1>Logged out</h1><p>The phone unlinked this device. Start a new login:</p>"
            "<form method='post' action='/login/relogin'><button>Link again</button></form>"
        )
        refresh = ""
    elif state is ConnectionState.FAILED:
        body = (
            "<h1>Connection failed</h1><p>Too many failed connects in a row; the worker "
            "stopped trying. Check the network, proxy and session, then:</p>"
            "<form method='post' action='/login/relogin'><button>Try again</button></form>"
        )
        refresh = ""
    elif state is ConnectionState.BANNED:
        body = "<h1>Account banned</h1><p>See the worker's log; no login is possible now.</p>"
        refresh = ""
    elif status.pair_code:
        body = (
            "<h1>Link with phone number</h1><p>On the phone: WhatsApp &rarr; Linked devices"
            " &rarr; Link with phone number, then enter</p>"
            f"<p style='font-size:3em'><code id='pair-code'>{html.escape(status.pair_code)}"
            "</code></p>"
        )
    elif status.qr:
        svg = segno.make_qr(status.qr).svg_inline(scale=8, border=4)
        body = (
            "<h1>Scan to link WhatsApp</h1><p>On the phone: WhatsApp &rarr; Linked devices"
            f" &rarr; Link a device.</p><div id='qr' data-count='{status.qr_count}'>{svg}</div>"
        )
    else:
        body = f"<h1>WhatsApp: {html.escape(state.value)}</h1><p>Waiting for WhatsApp.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>{refresh}"
        f"<title>wa-trio login</title></head><body style='background:#fff'>{body}</body></html>"
    )


__all__ = ["render"]
