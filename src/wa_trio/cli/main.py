"""``wa-trio``: argument parsing and subcommands; the work is done elsewhere.

Exit codes: 0 ok; 1 a job or command failed (``validate`` of an invalid job, ``send`` refused);
2 bad configuration or a broker topology that conflicts with ours (one line on stderr).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import trio

from wa_trio import __version__
from wa_trio.config.settings import ConfigError, Settings
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.errors import TopologyError, WaTrioError
from wa_trio.stores.files import StartupError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wa-trio",
        description="WhatsApp send worker: consumes send jobs from RabbitMQ and delivers them "
        "from one linked WhatsApp account. Configured by environment variables "
        "(see `wa-trio check` and README.md).",
    )
    parser.add_argument("--version", action="version", version=f"wa-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the worker until SIGTERM/SIGINT")
    sub.add_parser("check", help="print the effective configuration (secrets redacted)")
    validate = sub.add_parser("validate", help="validate one job JSON (file or - for stdin)")
    validate.add_argument("file", help="path to a JSON file, or - to read stdin")
    send = sub.add_parser("send", help="publish one job to the configured exchange")
    send.add_argument(
        "--destination", required=True, help="e.g. +5511999999999, or a group: <digits>@g.us"
    )
    send.add_argument("--text", default=None, help="message text (a media's caption)")
    send.add_argument(
        "--media", default=None, help="a file (sent inline, base64) or an http(s) URL"
    )
    send.add_argument(
        "--kind",
        default=None,
        choices=("image", "document", "video", "audio", "voice", "sticker"),
        help="with --media: what it is",
    )
    send.add_argument("--filename", default=None, help="with --media: the name shown")
    send.add_argument("--user-id", default=None, help="UUID (default: a random one)")
    send.add_argument("--message-id", default=None, help="AMQP message_id (the job key)")
    send.add_argument(
        "--wait",
        action="store_true",
        help="print the job's status events (sent, delivered, read, failed) as they arrive",
    )
    send.add_argument("--wait-seconds", type=float, default=60.0, help="with --wait: give up after")
    send.add_argument(
        "--no-validate",
        action="store_true",
        help="publish even if the job would be rejected (to try the DLQ)",
    )
    templates = sub.add_parser("templates", help="message templates: list, render (preview)")
    templates_sub = templates.add_subparsers(
        dest="templates_command", required=True, metavar="ACTION"
    )
    templates_sub.add_parser("list", help="one JSON line per template file: name, language, params")
    render = templates_sub.add_parser("render", help="print a template rendered with --params")
    render.add_argument("name")
    render.add_argument("--params", default="{}", help="a JSON object of strings and numbers")
    render.add_argument(
        "--language", default=None, help="e.g. pt_BR (falls back to the plain file)"
    )
    dlq = sub.add_parser("dlq", help="dead-letter queue: list, replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="show dead-lettered jobs and why (nothing removed)")
    dlq_list.add_argument("--limit", type=_count, default=100)
    dlq_replay = dlq_sub.add_parser("replay", help="send dead-lettered jobs back to the queue")
    dlq_replay.add_argument("--code", default=None, help="only jobs with this x-error-code")
    dlq_replay.add_argument("--limit", type=_count, default=None, help="at most N jobs")
    session = sub.add_parser("session", help="back up or restore the WhatsApp session")
    session_sub = session.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    export = session_sub.add_parser("export", help="copy the session database to FILE (online)")
    export.add_argument("file", type=Path)
    export.add_argument("--force", action="store_true", help="overwrite FILE")
    export.add_argument("--account", default=None, help="with several WHATSAPP_ACCOUNTS")
    restore = session_sub.add_parser("import", help="restore the session database from FILE")
    restore.add_argument("file", type=Path)
    restore.add_argument("--force", action="store_true", help="overwrite a linked session")
    restore.add_argument("--account", default=None, help="with several WHATSAPP_ACCOUNTS")
    optout = sub.add_parser("optout", help="the opt-out list: list, add, remove (no worker needed)")
    optout_sub = optout.add_subparsers(dest="optout_command", required=True, metavar="ACTION")
    optout_sub.add_parser("list", help="one JSON line per opted-out number")
    for action in ("add", "remove"):
        change = optout_sub.add_parser(action, help=f"{action} a number (any job destination form)")
        change.add_argument("number")
    sub.add_parser(
        "relogin",
        help="ask the running worker (HTTP_HOST:HTTP_PORT, WHATSAPP_ADMIN_TOKEN) to connect or "
        "log in again: after a logout, or when it stopped trying (state failed)",
    )
    login = sub.add_parser("login", help="link the WhatsApp account (QR or pair code), then exit")
    login.add_argument("--timeout", type=float, default=300.0, help="give up after N seconds")
    login.add_argument("--account", default=None, help="which of WHATSAPP_ACCOUNTS to link")
    accounts = sub.add_parser(
        "accounts", help="each account: state, linked number (masked in production), holder"
    )
    accounts.add_argument("--json", action="store_true", help="one JSON line per account")
    return parser


def leave(code: int) -> NoReturn:
    """Exit with ``code``. If a non-daemon thread is still alive (neonize's worker thread can
    stay blocked in Go after ``stop()`` while QR codes were being emitted), a normal exit would
    wait for it for ever: flush, then exit hard with the intended code."""
    sys.stdout.flush()
    sys.stderr.flush()
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def entry_point() -> NoReturn:
    """The ``wa-trio`` console script."""
    leave(main())


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.file)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"wa-trio: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command in {"session", "login"}:
            settings = one_account(settings, args.account)
        return _COMMANDS[args.command](settings, args)
    except (TopologyError, StartupError) as error:
        print(f"wa-trio: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:  # a log folder or file that cannot be made, and the like
        where = f" {error.filename}" if error.filename else ""
        print(f"wa-trio: cannot use{where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("wa-trio: interrupted", file=sys.stderr)
        return 130
    except WaTrioError as error:
        print(f"wa-trio: {error.code}: {error}", file=sys.stderr)
        return EXIT_FAILED


def _optout(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import optout

    return optout(settings, args)


def _relogin(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import relogin

    return relogin(settings)


def _accounts(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import accounts

    return accounts(settings, as_json=args.json)


#: each subcommand (but ``validate``, which reads no settings) and what runs it
_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "check": lambda settings, _args: _check(settings),
    "run": lambda settings, _args: _run(settings),
    "send": lambda settings, args: _send(settings, args),
    "session": lambda settings, args: _session(settings, args),
    "dlq": lambda settings, args: _dlq(settings, args),
    "login": lambda settings, args: _login(settings, args.timeout),
    "templates": lambda settings, args: _templates(settings, args),
    "optout": _optout,
    "relogin": _relogin,
    "accounts": _accounts,
}


def one_account(settings: Settings, name: str | None) -> Settings:
    """The settings of account ``name`` (default: the first of WHATSAPP_ACCOUNTS).

    Raises:
        StartupError: no such account in WHATSAPP_ACCOUNTS (one line).
    """
    name = name or settings.accounts[0]
    if name not in settings.accounts:
        raise StartupError(
            f"no account {name!r} in WHATSAPP_ACCOUNTS ({', '.join(settings.accounts)})"
        )
    return settings.for_account(name) if settings.multi_account else settings


def _check(settings: Settings) -> int:
    for name, value in settings.as_redacted_dict().items():
        print(f"{name}={value}")
    from wa_trio.worker.startup import load_templates

    count = len(load_templates(settings).templates)  # a broken template: one line, exit 2
    if settings.templates_dir is not None:
        print(f"# {count} template file(s) compiled", file=sys.stderr)
    return EXIT_OK


def _templates(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.core.templates import TemplateProblem
    from wa_trio.worker.startup import load_templates

    templates = load_templates(settings)
    if args.templates_command == "list":
        for template in templates.names():
            print(
                json.dumps(
                    {
                        "name": template.name,
                        "language": template.language,
                        "params": sorted(template.params),
                        "file": template.path.name,
                    }
                )
            )
        return EXIT_OK
    try:
        params = json.loads(args.params)
    except ValueError:
        print("wa-trio: --params is not JSON", file=sys.stderr)
        return EXIT_CONFIG
    try:
        text = templates.render(args.name, params, args.language)
    except TemplateProblem as problem:
        print(json.dumps({"ok": False, "code": problem.code, "message": problem.message}))
        return EXIT_FAILED
    print(text)
    return EXIT_OK


def _validate(file: str) -> int:
    try:
        body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as error:
        print(f"wa-trio: cannot read {file}: {error.strerror or error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = Settings.from_env(os.environ)
        from wa_trio.worker.startup import load_templates

        templates = load_templates(settings)
    except (ConfigError, StartupError) as error:
        print(f"wa-trio: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        envelope = parse_envelope(
            body,
            content_filter=settings.content_filter,
            templates=templates,
            cloud_templates=settings.transport != "neonize",
        )
    except ValidationError as error:
        print(json.dumps({"ok": False, "code": error.code, "message": error.message}))
        return EXIT_FAILED
    print(
        json.dumps(
            {"ok": True, "user_id": str(envelope.user_id), "destination": envelope.destination}
        )
    )
    return EXIT_OK


def _run(settings: Settings) -> int:
    from wa_trio.log import configure_logging
    from wa_trio.run import run_worker

    handle = configure_logging(settings)
    try:
        trio.run(run_worker, settings)
    finally:
        handle.close()
    return EXIT_OK


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.bus.job_publisher import publish_job

    user_id = args.user_id or str(uuid.uuid4())
    job: dict[str, object] = {"user_id": user_id, "destination": args.destination}
    if args.text is not None:
        job["text_message"] = args.text
    if (args.media is None) != (args.kind is None):
        print("wa-trio: --media and --kind go together", file=sys.stderr)
        return EXIT_FAILED
    if args.media is None and args.text is None:
        print("wa-trio: give --text, or --media with --kind", file=sys.stderr)
        return EXIT_FAILED
    if args.media is not None:
        job["media"] = _media_field(args)
    body = json.dumps(job, ensure_ascii=False).encode()
    if not args.no_validate:
        try:
            parse_envelope(
                body,
                content_filter=settings.content_filter,
                cloud_templates=settings.transport != "neonize",
                media_inline_max=settings.media_inline_max_bytes,
            )
        except ValidationError as error:
            print(f"wa-trio: job not published: {error.code}: {error.message}", file=sys.stderr)
            return EXIT_FAILED
    message_id = args.message_id or str(uuid.uuid4())
    if args.wait:
        from wa_trio.bus.job_publisher import publish_and_watch

        # dry-run sends are never delivered or read: "sent" is the last event to wait for
        final = {"sent", "failed"} if settings.transport == "dry-run" else {"read", "failed"}
        events = trio.run(
            functools.partial(
                publish_and_watch,
                settings,
                body,
                message_id,
                args.wait_seconds,
                lambda event: print(json.dumps(event), flush=True),
                final=final,
            )
        )
        sent = any(event.get("status") in {"sent", "delivered", "read"} for event in events)
        return EXIT_OK if sent else EXIT_FAILED
    trio.run(publish_job, settings, body, message_id)
    print(
        json.dumps(
            {
                "published": True,
                "message_id": message_id,
                "exchange": settings.exchange,
                "routing_key": settings.routing_key,
            }
        )
    )
    return EXIT_OK


def _media_field(args: argparse.Namespace) -> dict[str, str]:
    """``--media``: a URL is passed on; a file is read and sent inline (base64)."""
    import base64

    media: dict[str, str] = {"kind": args.kind}
    if args.media.startswith(("http://", "https://")):
        media["url"] = args.media
    else:
        path = Path(args.media)
        media["data"] = base64.b64encode(path.read_bytes()).decode()
        media["filename"] = path.name
    if args.filename:
        media["filename"] = args.filename
    return media


def _session(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.session_backup import export_account, import_account
    from wa_trio.config.settings import redact_url

    where = redact_url(settings.session_database)
    if args.session_command == "export":
        tables = export_account(settings, args.file, force=args.force)
        print(
            f"wa-trio: exported {where} -> {args.file} ({tables} tables); "
            "keep it secret: it is the account's credential",
            file=sys.stderr,
        )
    else:
        tables = import_account(settings, args.file, force=args.force)
        print(f"wa-trio: imported {args.file} -> {where} ({tables} tables)", file=sys.stderr)
    return EXIT_OK


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.bus import dlq

    if args.dlq_command == "list":
        letters = trio.run(dlq.list_dead_letters, settings, args.limit)
        for letter in letters:
            print(json.dumps(letter.as_dict()))
        print(json.dumps({"listed": len(letters), "queue": settings.dlq_name}), file=sys.stderr)
        return EXIT_OK
    report = trio.run(lambda: dlq.replay(settings, code=args.code, limit=args.limit))
    print(json.dumps({"replayed": report.replayed, "left": report.left}))
    return EXIT_OK


def _login(settings: Settings, timeout: float) -> int:
    from wa_trio.cli.login import run_login
    from wa_trio.log import configure_logging

    handle = configure_logging(settings)
    try:
        linked = trio.run(run_login, settings, timeout)
    finally:
        handle.close()
    return EXIT_OK if linked else EXIT_FAILED
