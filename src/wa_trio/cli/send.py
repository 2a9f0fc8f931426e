"""``wa-trio send``: one job from flags (text, media by file or URL, a template, a schedule, an
expiry, an account) or a raw JSON body (``--json FILE|-``), validated with the worker's rules
before it is published."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import trio

from wa_trio.bus.job_publisher import publish_job
from wa_trio.cli.exits import EXIT_FAILED, EXIT_OK
from wa_trio.config.settings import Settings
from wa_trio.core.envelope import ValidationError


class Refused(Exception):
    """The flags do not make a job (one line to show)."""


def build_body(args: argparse.Namespace) -> bytes:
    """The job's JSON body from ``--json`` or from the flags.

    Raises:
        Refused: the flags contradict each other or miss what a job needs.
    """
    if args.json is not None:
        raw = sys.stdin.buffer.read() if args.json == "-" else Path(args.json).read_bytes()
        return raw
    if args.destination is None:
        raise Refused("give --destination (or the whole job with --json FILE|-)")
    if (args.media is None) != (args.kind is None):
        raise Refused("--media and --kind go together")
    if args.media is None and args.text is None and args.template is None:
        raise Refused("give --text, --template, or --media with --kind")
    job: dict[str, Any] = {
        "user_id": args.user_id or str(uuid.uuid4()),
        "destination": args.destination,
    }
    optional = {
        "text_message": args.text,
        "template": args.template,
        "language": args.language,
        "send_at": args.send_at,
        "expires_at": args.expires_at,
        "ttl_seconds": args.ttl_seconds,
        "account": args.account,
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    if args.params is not None:
        if args.template is None:
            raise Refused("--params goes with --template")
        try:
            job["params"] = json.loads(args.params)
        except ValueError:
            raise Refused("--params is not JSON") from None
    if args.media is not None:
        job["media"] = _media_field(args)
    return json.dumps(job, ensure_ascii=False).encode()


def send(settings: Settings, args: argparse.Namespace) -> int:
    try:
        body = build_body(args)
    except Refused as refused:
        print(f"wa-trio: {refused}", file=sys.stderr)
        return EXIT_FAILED
    if not args.no_validate:
        from wa_trio.client import check_job
        from wa_trio.worker.startup import load_templates

        templates = load_templates(settings) if settings.templates_dir is not None else None
        try:
            check_job(settings, body, templates)
        except ValidationError as error:
            print(f"wa-trio: job not published: {error.code}: {error.message}", file=sys.stderr)
            if error.code == "template_not_found" and templates is None:
                print("wa-trio: (set WHATSAPP_TEMPLATES_DIR as the worker has it, or pass "
                      "--no-validate)", file=sys.stderr)  # fmt: skip
            return EXIT_FAILED
    message_id = args.message_id or str(uuid.uuid4())
    if args.wait:
        return _publish_and_wait(settings, body, message_id, args.wait_seconds)
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


def _publish_and_wait(settings: Settings, body: bytes, message_id: str, seconds: float) -> int:
    from wa_trio.bus.job_publisher import publish_and_watch

    # dry-run sends are never delivered or read: "sent" is the last event to wait for
    final = {"sent", "failed"} if settings.transport == "dry-run" else {"read", "failed"}
    events = trio.run(
        functools.partial(
            publish_and_watch,
            settings,
            body,
            message_id,
            seconds,
            lambda event: print(json.dumps(event), flush=True),
            final=final,
        )
    )
    sent = any(event.get("status") in {"sent", "delivered", "read"} for event in events)
    return EXIT_OK if sent else EXIT_FAILED


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


__all__ = ["Refused", "build_body", "send"]
