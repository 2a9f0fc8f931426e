"""neonize's process-wide side: the bundled library, the client factory, log routing, and the
one error boundary for neonize calls.

- ``neonize._binder`` downloads a library at import time when the bundled one is missing;
  ``check_bundled_library`` refuses to let that happen.
- Importing neonize sets the root logger to INFO on stderr; ``new_client`` puts the root logger
  back as it was and routes neonize/whatsmeow records (WARNING and up, so Go filters too) into
  eliot with phone-number-like runs masked. whatsmeow still prints some failed-send errors with
  JIDs straight to stdout from Go; that output cannot be intercepted from Python
  (docs/login.md, "What whatsmeow prints").
- Each client gets a unique ``uuid`` (neonize's Go-side key): two ``NewClient`` objects with the
  same database name would share a key, and the first one's finalizer (run at some later
  garbage collection) would stop the second one's session.
- ``neonize_errors`` is where neonize's exceptions become ours (in the spirit of httpcore's
  ``map_exceptions``): a code, a masked message, never a bare ``Exception`` upward.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import eliot
import segno

from wa_trio.errors import SendError, TransportError
from wa_trio.files import private_dir
from wa_trio.log import mask_numbers


def bundled_library() -> Path:
    """Path of the whatsmeow library inside the installed neonize wheel (not imported)."""
    spec = importlib.util.find_spec("neonize")
    if spec is None or spec.origin is None:
        raise TransportError("neonize is not installed")
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    system = platform.system().lower()
    ext = {"windows": "dll", "darwin": "dylib"}.get(system, "so")
    return Path(spec.origin).parent / f"neonize-{system}-{arch}.{ext}"


def check_bundled_library() -> None:
    """Refuse to import neonize when it would download its library at run time."""
    library = bundled_library()
    if not library.exists():
        raise TransportError(
            f"neonize's bundled whatsmeow library {library.name} is missing; wa-trio will not "
            "let neonize download one at run time. Reinstall a neonize wheel for this platform."
        )


def new_client(database: str) -> Any:
    """A neonize ``NewClient`` on ``database`` with a unique Go-side key (see module docstring)."""
    check_bundled_library()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from neonize.client import NewClient

    root.handlers[:] = handlers  # neonize's import configures the root logger: undo it
    root.setLevel(level)
    _route_neonize_logs()
    return NewClient(database, props=send_only_props(), uuid=f"wa-trio-{secrets.token_hex(8)}")


def send_only_props() -> Any:
    """Device properties asking WhatsApp for the least history it allows: a send-only worker
    reads none, and the full sync while linking is what makes memory spike (waha#1826). The
    phone decides in the end; these are requests."""
    from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

    history = DeviceProps.HistorySyncConfig(
        fullSyncDaysLimit=1,
        fullSyncSizeMbLimit=1,
        storageQuotaMb=1,
        recentSyncDaysLimit=1,
        inlineInitialPayloadInE2EeMsg=False,
        supportCallLogHistory=False,
        supportBotUserAgentChatHistory=False,
        supportCagReactionsAndPolls=False,
    )
    return DeviceProps(os="wa-trio", requireFullSync=False, historySyncConfig=history)


class _EliotBridge(logging.Handler):
    """whatsmeow/neonize log records -> eliot messages, with long digit runs (JIDs) masked."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = mask_numbers(record.getMessage())
            eliot.log_message(
                message_type="wa_trio:whatsmeow",
                logger=record.name,
                level=record.levelname.lower(),
                text=text[:500],
            )
        except Exception:  # noqa: BLE001 - logging must never break the Go callback thread
            self.handleError(record)


def _route_neonize_logs() -> None:
    bridge = _EliotBridge(level=logging.WARNING)
    for name in ("whatsmeow", "Whatsmeow", "neonize"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [bridge]
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@contextlib.contextmanager
def neonize_errors(
    what: str, *, code: str, mask: Callable[[str], str] = mask_numbers, transient: bool = True
) -> Iterator[None]:
    """Translate any exception a neonize call raises into ``SendError(code)`` with a masked
    message (the one place we catch neonize's exceptions, which derive from ``Exception``)."""
    try:
        yield
    except SendError:
        raise
    except Exception as error:  # noqa: BLE001 - neonize raises plain Exception subclasses
        raise SendError(
            f"{what}: {mask(str(error)[:300])}", code=code, transient=transient
        ) from None


# ------------------------------------------------------- blocking calls (run in worker threads)


def show_composing(client: Any, jid_user: str, composing: bool) -> None:
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia
    from neonize.utils.jid import build_jid

    state = ChatPresence.CHAT_PRESENCE_COMPOSING if composing else ChatPresence.CHAT_PRESENCE_PAUSED
    client.send_chat_presence(
        build_jid(jid_user), state, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    )


def send_text(client: Any, jid_user: str, text: str) -> Any:
    from neonize.utils.jid import build_jid

    return client.send_message(build_jid(jid_user), text)


def prepare_session_dir(path: Path) -> None:
    """Create the session folder 0700 and the session database 0600 (before neonize opens it)."""
    private_dir(path)
    database = path / "whatsapp.db"
    fd = os.open(database, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    tighten_session_files(path)


def tighten_session_files(path: Path) -> None:
    for file in path.glob("*.db*"):
        file.chmod(0o600)


def linked_number(client: Any) -> str | None:
    """The linked account's number (E.164) from the client's ``me`` (set on Connected)."""
    user = getattr(getattr(getattr(client, "me", None), "JID", None), "User", "")
    return f"+{user}" if user else None


def print_qr(payload: str, out: TextIO) -> None:
    """The QR code as a scannable block on the terminal (the operator's first login)."""
    print(
        "wa-trio: scan this QR code with WhatsApp (Linked devices -> Link a device); "
        "it is also at /login",
        file=out,
    )
    segno.make_qr(payload).terminal(out=out, compact=True)
    out.flush()
