"""``wa-trio optout`` and ``wa-trio relogin``: the account's opt-out list (no worker needed)
and asking the running worker to connect or log in again."""

from __future__ import annotations

import argparse
import json
import sys

import attrs
import trio

from wa_trio.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from wa_trio.config import Settings
from wa_trio.envelope import ValidationError


def optout(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from wa_trio.contacts import ContactStore
    from wa_trio.envelope import clean_destination
    from wa_trio.files import private_dir
    from wa_trio.log import Redactor

    private_dir(settings.session_path)
    # several accounts share one opt-out list in the session folder (docs/scaling.md)
    name = "optouts.db" if settings.multi_account else "contacts.db"
    store = ContactStore(settings.session_path / name)
    try:
        if args.optout_command == "list":
            for entry in store.optouts():
                print(json.dumps(attrs.asdict(entry)))
            return EXIT_OK
        try:
            number = clean_destination(args.number)
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


def relogin(settings: Settings) -> int:
    from wa_trio import http_client

    token = settings.admin_token
    if not token:
        print("wa-trio: relogin needs WHATSAPP_ADMIN_TOKEN (the running worker's)", file=sys.stderr)
        return EXIT_CONFIG
    host = "127.0.0.1" if settings.http_host in {"0.0.0.0", "::"} else settings.http_host  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.http_port}/login/relogin"

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


__all__ = ["optout", "relogin"]
