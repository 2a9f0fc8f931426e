"""``wa-trio``: argument parsing and subcommands; the work is done elsewhere.

Exit codes: 0 ok; 1 a job or command failed (``validate`` of an invalid job, ``send`` refused);
2 bad configuration or a broker topology that conflicts with ours (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import trio

from wa_trio.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from wa_trio.cli.parser import parser as _parser
from wa_trio.config.settings import ConfigError, Settings, config_problems
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.errors import TopologyError, WaTrioError, first_leaf
from wa_trio.stores.files import StartupError


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.file)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        # check names every problem at once; other commands the first
        for each in config_problems(os.environ) if args.command == "check" else [error]:
            print(f"wa-trio: {each}", file=sys.stderr)
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
        return EXIT_INTERRUPTED
    except WaTrioError as error:
        print(f"wa-trio: {error.code}: {error}", file=sys.stderr)
        return EXIT_FAILED


def _optout(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import optout

    return optout(settings, args)


def _relogin(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import relogin

    return relogin(settings)


def _inbound(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import inbound

    return inbound(settings, args.sender, args.text, args.account)


def _accounts(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.accounts import accounts

    return accounts(settings, as_json=args.json)


def _trace(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.trace import trace

    return trace(settings, args.query, as_json=args.json)


#: each subcommand (but ``validate``, which reads no settings) and what runs it
_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "check": lambda settings, args: _check(settings, args.connect),
    "run": lambda settings, _args: _run(settings),
    "send": lambda settings, args: _send(settings, args),
    "session": lambda settings, args: _session(settings, args),
    "dlq": lambda settings, args: _dlq(settings, args),
    "login": lambda settings, args: _login(settings, args.timeout),
    "templates": lambda settings, args: _templates(settings, args),
    "optout": _optout,
    "relogin": _relogin,
    "accounts": _accounts,
    "trace": _trace,
    "inbound": _inbound,
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


def _check(settings: Settings, connect: bool = False) -> int:
    for name, value in settings.as_redacted_dict().items():
        print(f"{name}={value}")
    if connect:
        from wa_trio.cli.check import connect_checks, report

        return EXIT_OK if report(trio.run(connect_checks, settings)) else EXIT_CONFIG
    from wa_trio.worker.startup import load_templates

    count = len(load_templates(settings).templates)  # a broken template: one line, exit 2
    if settings.templates_dir is not None:
        print(f"# {count} template file(s) compiled", file=sys.stderr)
    return EXIT_OK


def _templates(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.core.templates import TemplateProblem
    from wa_trio.worker.startup import load_templates

    if settings.templates_dir is None:
        print(
            "wa-trio: WHATSAPP_TEMPLATES_DIR is unset: there are no templates to "
            f"{args.templates_command} (docs/templates.md)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    templates = load_templates(settings)
    if args.templates_command == "list":
        for template in templates.names():
            print(
                json.dumps(
                    {
                        "name": template.name,
                        "language": template.language,
                        "params": sorted(template.params),
                        "optional": sorted(template.optional),
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
            cloud_templates=settings.transports != {"neonize"},
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


def _in_container() -> bool:
    """Podman writes /run/.containerenv, Docker /.dockerenv; both set ``container`` too
    (Podman) or Kubernetes its service variables."""
    marks = (Path("/run/.containerenv"), Path("/.dockerenv"))
    return any(mark.exists() for mark in marks) or bool(
        os.environ.get("container")  # noqa: SIM112 - systemd's and Podman's own name
        or os.environ.get("KUBERNETES_SERVICE_HOST")
    )


def _run(settings: Settings) -> int:
    from wa_trio.config.describe import outside_image_defaults
    from wa_trio.log import configure_logging
    from wa_trio.run import run_worker

    line, refusal = outside_image_defaults(settings, os.environ, _in_container())
    if refusal is not None and not settings.session_path.exists():
        print(f"wa-trio: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    if line is not None:
        print(line, file=sys.stderr, flush=True)

    handle = configure_logging(settings)
    try:
        trio.run(run_worker, settings)
    except BaseExceptionGroup as group:
        # an account of several that cannot start: its one line (main prints it), not a group
        startup = group.split((StartupError, TopologyError))[0]
        if startup is not None:
            raise first_leaf(startup) from None
        # a second signal while stopping raises KeyboardInterrupt inside the root nursery:
        # it arrives wrapped in a group; the operator asked for it, so no traceback
        rest = group.split(KeyboardInterrupt)[1]
        if rest is not None and rest.split(trio.Cancelled)[1] is not None:
            raise
        print("wa-trio: stopped at once (a second signal)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        handle.close()
    return EXIT_OK


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.send import send

    return send(settings, args)


def _session(settings: Settings, args: argparse.Namespace) -> int:
    from wa_trio.cli.session_backup import export_account, import_account
    from wa_trio.config.redact import redact_url

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

    if settings.transport != "neonize":
        print(
            f"wa-trio: WHATSAPP_TRANSPORT={settings.transport} links no device: "
            + (
                "dry-run never touches WhatsApp"
                if settings.transport == "dry-run"
                else "the Cloud API's account is its access token (docs/cloud-api.md)"
            ),
            file=sys.stderr,
        )
        return EXIT_CONFIG

    handle = configure_logging(settings)
    try:
        linked = trio.run(run_login, settings, timeout)
    finally:
        handle.close()
    return EXIT_OK if linked else EXIT_FAILED
