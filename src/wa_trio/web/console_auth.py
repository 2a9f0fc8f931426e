"""Who may use the console (and /login): the operator token, then a session cookie.

The first request carries the token the way /login takes it (HTTP Basic's password, so a
browser asks; or a Bearer token). The answer sets a session cookie (``HttpOnly``,
``SameSite=Strict``, ``Path=/``; ``Secure`` when the request came over HTTPS), signed with the
token by itsdangerous and good for ``SESSION_SECONDS``: changing WHATSAPP_ADMIN_TOKEN ends every
session. Every state-changing request carries a CSRF token derived from the session (HMAC of
the token), checked in constant time, and passes ``same_origin``: a cached Basic credential or
cookie is not consent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

import attrs
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "wa_trio_console"
SESSION_SECONDS = 12 * 3600


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the operator token (Basic password or Bearer)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        given = value
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def same_origin(headers: Any) -> bool:
    """Whether a state-changing request comes from our own pages (or from no browser at all).

    A browser sends ``Sec-Fetch-Site`` and ``Origin`` with a cross-site form POST; a page of
    another site cannot forge either. Without both (curl, a script holding the token) the
    request is allowed: it carried the token itself. ``headers``: any mapping with ``get``
    (Quart's ``Headers``, a dict in tests). Issue 26: ``POST /login/relogin`` was
    reachable from any site once the operator's browser had cached the Basic credential."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    try:
        return bool(urlsplit(str(origin)).netloc.lower() == str(headers.get("Host") or "").lower())
    except ValueError:
        return False


@attrs.frozen
class Access:
    """What a request may do: ``ok`` (token or session), its session id (a new one to set
    as a cookie when ``fresh``)."""

    ok: bool
    session: str = ""
    fresh: bool = False


class ConsoleAuth:
    def __init__(self, token: str) -> None:
        self._token = token
        self._signer = URLSafeTimedSerializer(token, salt="wa-trio console session")

    def check(self, authorization: str | None, cookie: str | None) -> Access:
        """A valid session cookie, or the token in ``authorization`` (a new session)."""
        if cookie:
            try:
                session = self._signer.loads(cookie, max_age=SESSION_SECONDS)
            except BadSignature:
                session = None
            if isinstance(session, str) and session:
                return Access(True, session)
        if authorized(authorization, self._token):
            return Access(True, secrets.token_urlsafe(18), fresh=True)
        return Access(False)

    def cookie_value(self, session: str) -> str:
        return self._signer.dumps(session)

    def csrf(self, session: str) -> str:
        mac = hmac.new(self._token.encode(), f"csrf:{session}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def csrf_ok(self, session: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(session), str(given))

    def ref(self, number: str) -> str:
        """An opaque handle for a number the page must not show (the opt-out list's remove
        buttons): HMAC of the token, so no page holds a full number in production."""
        mac = hmac.new(self._token.encode(), f"ref:{number}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def set_cookie(self, response: Any, session: str, *, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self.cookie_value(session),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            secure=secure,
            path="/",
        )


__all__ = ["COOKIE", "SESSION_SECONDS", "Access", "ConsoleAuth", "authorized", "same_origin"]
