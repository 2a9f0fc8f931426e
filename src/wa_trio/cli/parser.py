"""``wa-trio``'s arguments: one sub-parser per subcommand (what runs them: ``main.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wa_trio import __version__


def parser() -> argparse.ArgumentParser:
    """The arguments of every subcommand (``wa-trio --help``)."""
    parser = argparse.ArgumentParser(
        prog="wa-trio",
        description="WhatsApp send worker: consumes send jobs from RabbitMQ and delivers them "
        "from one linked WhatsApp account. Configured by environment variables "
        "(see `wa-trio check` and README.md).",
    )
    parser.add_argument("--version", action="version", version=f"wa-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the worker until SIGTERM/SIGINT")
    check = sub.add_parser("check", help="print the effective configuration (secrets redacted)")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also try the broker, the store, ffmpeg, templates, the Cloud API and the port",
    )
    validate = sub.add_parser("validate", help="validate one job JSON (file or - for stdin)")
    validate.add_argument("file", help="path to a JSON file, or - to read stdin")
    send = sub.add_parser("send", help="publish one job to the configured exchange")
    send.add_argument(
        "--destination", default=None, help="e.g. +5511999999999, or a group: <digits>@g.us"
    )
    send.add_argument("--json", default=None, metavar="FILE|-", help="the whole job's JSON body")
    send.add_argument("--template", default=None, help="a template's name (WHATSAPP_TEMPLATES_DIR)")
    send.add_argument("--params", default=None, help="with --template: its variables, as JSON")
    send.add_argument("--language", default=None, help="with --template: e.g. pt_BR")
    send.add_argument("--send-at", default=None, help="RFC 3339 time to send at (a schedule)")
    send.add_argument("--expires-at", default=None, help="RFC 3339 time after which not to send")
    send.add_argument("--ttl-seconds", type=int, default=None, help="not to send after N seconds")
    send.add_argument("--account", default=None, help="the account to send from (several)")
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
    trace = sub.add_parser("trace", help="one job's story: ledger, log, dead letters, tree")
    trace.add_argument("query", metavar="MESSAGE_ID|JOB_KEY")
    trace.add_argument("--json", action="store_true", help="one JSON object")
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
    inbound = sub.add_parser(
        "inbound",
        help="dry-run only: have the running worker 'receive' a message (try opt-outs, replies)",
    )
    inbound.add_argument("--from", dest="sender", required=True, help="the sender's number")
    inbound.add_argument("--text", required=True, help="what they wrote, e.g. STOP")
    inbound.add_argument("--account", default=None, help="which of WHATSAPP_ACCOUNTS receives it")
    login = sub.add_parser("login", help="link the WhatsApp account (QR or pair code), then exit")
    login.add_argument("--timeout", type=float, default=300.0, help="give up after N seconds")
    login.add_argument("--account", default=None, help="which of WHATSAPP_ACCOUNTS to link")
    accounts = sub.add_parser(
        "accounts", help="each account: state, linked number (masked in production), holder"
    )
    accounts.add_argument("--json", action="store_true", help="one JSON line per account")
    return parser


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


__all__ = ["parser"]
