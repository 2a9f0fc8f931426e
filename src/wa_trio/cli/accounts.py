"""``wa-trio optout``, ``wa-trio relogin`` and ``wa-trio accounts``: the opt-out list (no
worker needed), asking the running worker to connect or log in again, and what each account
is doing and who holds it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

import attrs
import trio

from wa_trio.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import ValidationError


def optout(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from wa_trio.core.envelope import clean_destination
    from wa_trio.core.identity import bsuid, person_key
    from wa_trio.log import Redactor
    from wa_trio.stores import open as stores

    if (
        settings.store is None
        and args.optout_command != "add"
        and not settings.session_path.is_dir()
    ):  # a mistyped path: say so rather than make a folder and an empty list
        print(
            f"wa-trio: no session folder at {settings.session_path} (WHATSAPP_SESSION_PATH): "
            "no opt-out list there",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    store = stores.optout_list(settings)  # one list for every account and replica
    try:
        if args.optout_command == "list":
            for entry in store.optouts():
                print(json.dumps(attrs.asdict(entry)))
            return EXIT_OK
        try:
            # any form of the number, or a Cloud API user's BSUID (core/identity.py)
            number = bsuid(args.number) or clean_destination(person_key(args.number))
        except ValidationError as error:
            print(f"wa-trio: {error.code}: {error.message}", file=sys.stderr)
            return EXIT_FAILED
        who = f"cli:{getpass.getuser()}"
        if args.optout_command == "add":
            changed = store.add_optout(number, who)
        else:
            changed = store.remove_optout(number)
        shown = Redactor(settings.production).phone(number)
        from eliot import log_message

        log_message(
            message_type=f"wa_trio:safety:optout_{args.optout_command}",
            number=shown,
            by=who,
            changed=changed,
        )
        verb = "added to" if args.optout_command == "add" else "removed from"
        state = "" if changed else " (nothing to change)"
        print(f"wa-trio: {shown} {verb} the opt-out list{state}", file=sys.stderr)
        return EXIT_OK
    finally:
        store.close()


def _local_url(settings: Settings, path: str) -> str:
    """The address of the worker on this host (HTTP_HOST:HTTP_PORT; a wildcard -> loopback)."""
    host = "127.0.0.1" if settings.http_host in {"0.0.0.0", "::"} else settings.http_host  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}{path}"


async def _local_health(settings: Settings) -> dict[str, tuple[str | None, str | None]]:
    """account -> (state, masked linked number) from the local worker's /healthz; {} when no
    worker answers there."""
    from wa_trio import http_client
    from wa_trio.stores.files import read_http_address

    # the address the running worker left in its session folder, else HTTP_HOST:HTTP_PORT
    base = read_http_address(settings.session_path) or _local_url(settings, "")
    try:
        async with http_client.client(5.0) as session:
            answer = await http_client.call_json(session, "GET", base + "/healthz")
    except http_client.HttpError:
        return {}
    body = answer.payload if isinstance(answer.payload, dict) else {}
    if isinstance(body.get("accounts"), dict):
        return {
            name: (each.get("state"), each.get("linked"))
            for name, each in body["accounts"].items()
            if isinstance(each, dict)
        }
    if "whatsapp" in body:
        return {settings.accounts[0]: (body.get("whatsapp"), body.get("linked"))}
    return {}


def relogin(settings: Settings) -> int:
    from wa_trio import http_client

    token = settings.admin_token
    if not token:
        print("wa-trio: relogin needs WHATSAPP_ADMIN_TOKEN (the running worker's)", file=sys.stderr)
        return EXIT_CONFIG
    url = _local_url(settings, "/login/relogin")

    async def ask() -> int:
        async with http_client.client(10.0) as session:
            answer = await http_client.post(session, url, b"", {"Authorization": f"Bearer {token}"})
        return answer.status

    status = trio.run(ask)
    if status == 303:
        print("wa-trio: the worker connects (or logs in) again; see /login", file=sys.stderr)
        return EXIT_OK
    print(f"wa-trio: the worker answered HTTP {status}", file=sys.stderr)
    return EXIT_FAILED


def inbound(settings: Settings, sender: str, text: str, account: str | None) -> int:
    """``wa-trio inbound``: POST /dry-run/inbound on the running worker (a dry-run one)."""
    from wa_trio import http_client

    token = settings.admin_token
    if not token:
        print("wa-trio: inbound needs WHATSAPP_ADMIN_TOKEN (the running worker's)", file=sys.stderr)
        return EXIT_CONFIG
    path = "/dry-run/inbound" + (f"?account={quote(account)}" if account else "")
    body = {"from": sender, "text": text}
    headers = {"Authorization": f"Bearer {token}"}

    async def ask() -> tuple[int, str]:
        async with http_client.client(10.0) as session:
            answer = await http_client.call_json(
                session, "POST", _local_url(settings, path), json_body=body, headers=headers
            )
        return answer.status, json.dumps(answer.payload)

    try:
        status, text_back = trio.run(ask)
    except http_client.HttpError as error:
        print(f"wa-trio: no worker answers at {_local_url(settings, '')}: {error.message}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    if status == 202:
        print(text_back.strip())
        return EXIT_OK
    print(f"wa-trio: the worker answered HTTP {status}: {text_back.strip()[:200]}", file=sys.stderr)
    return EXIT_FAILED


def accounts(settings: Settings, *, as_json: bool = False) -> int:
    """One line per account: name, state, linked number (masked in production), holder.

    With PostgreSQL the store knows: each holder's heartbeat (every 0.5 s) records the state
    and the masked number, the advisory lock says whether it is held now. With SQLite files:
    the session lock says whether a worker on this host holds the account, and that worker's
    /healthz (HTTP_HOST:HTTP_PORT) its state and number."""
    rows = _rows_from_store(settings) if settings.store else trio.run(_rows_from_files, settings)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    columns = ("account", "state", "linked", "holder")
    widths = [max(len(c), *(len(str(r[c] or "-")) for r in rows)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        cells = (str(row[c] or "-").ljust(w) for c, w in zip(columns, widths, strict=True))
        print("  ".join(cells).rstrip())
    return EXIT_OK


def _rows_from_store(settings: Settings) -> list[dict[str, Any]]:
    import time

    from wa_trio.stores.postgres import lease_table, migrate

    assert settings.store is not None
    migrate(settings.store)
    known = {row.account: row for row in lease_table(settings.store)}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(settings.accounts) | set(known)):
        row = known.get(name)
        if row is None:
            rows.append({"account": name, "state": "never started", "linked": None, "holder": None})
            continue
        if row.held:
            state, holder = row.state or "starting", row.holder
        else:
            state, holder = "not held", None
            if row.holder:  # died or was cut off without releasing it
                state = f"not held (last holder {row.holder} did not release it)"
        seen = None if row.seen_at is None else round(time.time() - row.seen_at, 1)
        rows.append(
            {
                "account": name,
                "state": state,
                "linked": row.linked,
                "holder": holder,
                "heartbeat_age_s": seen,  # a number (seconds), or None
            }
        )
    return rows


async def _rows_from_files(settings: Settings) -> list[dict[str, str | None]]:
    from wa_trio.stores.files import try_lock_session

    health = await _local_health(settings)
    rows = []
    for name in settings.accounts:
        folder = settings.for_account(name).session_path
        holder = None
        if folder.is_dir():
            handle = try_lock_session(folder)
            if handle is None:
                holder = "a worker on this host"
            else:
                handle.close()
        state, linked = health.get(name, (None, None))
        rows.append(
            {
                "account": name,
                "state": state
                or ("stopped" if holder is None else "unknown (no answer on HTTP_PORT)"),
                "linked": linked,
                "holder": holder,
            }
        )
    return rows


__all__ = ["accounts", "optout", "relogin"]
