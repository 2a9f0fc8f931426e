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

from wa_trio.core.errors import SendError, TransportError
from wa_trio.log import mask_numbers
from wa_trio.stores.files import private_dir


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


def lid_jid(user: str) -> Any:
    """The JID of a hidden (``@lid``) id, as neonize's ``get_pn_from_lid`` takes it."""
    from neonize.proto.Neonize_pb2 import JID

    return JID(User=user, Server="lid", RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def pair_client() -> dict[str, Any]:
    """The client ``PairPhone`` names to WhatsApp: Chrome on Linux, given explicitly (neonize's
    ``NewClient.PairPhone`` otherwise derives it from the device properties, FIREFOX without)."""
    from neonize.utils.enum import ClientName, ClientType

    return {"client_name": ClientName.LINUX, "client_type": ClientType.CHROME}


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
    # platformType: neonize's PairPhone names the client "<platform> (<os>)" from it, and
    # whatsmeow documents that the server refuses names that are not a common browser
    # (unset, the pair code was requested as "UNKNOWN (LINUX)"; issue 27)
    return DeviceProps(
        os="wa-trio",
        platformType=DeviceProps.PlatformType.CHROME,
        requireFullSync=False,
        historySyncConfig=history,
    )


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
    # the level Go filters at: neonize's connect() passes ``LogLevel.from_logging(log.level)``
    # of its module logger ``neonize.client`` to Go (client.py), the logger's *own* level, not
    # the effective one: left NOTSET it became "" and Go's logger (goneonize/utils/log.go
    # ``NewLogger``: "" is -1) sent every DEBUG line across into Python (issue 27, item 10)
    logging.getLogger("neonize.client").setLevel(logging.WARNING)


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


def show_composing(
    client: Any, jid_user: str, composing: bool, *, audio: bool = False, server: str = ""
) -> None:
    """ "typing..." (or "recording audio..." for a voice note) in the recipient's chat."""
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    state = ChatPresence.CHAT_PRESENCE_COMPOSING if composing else ChatPresence.CHAT_PRESENCE_PAUSED
    media = (
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO
        if audio
        else ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    )
    client.send_chat_presence(_jid(jid_user, server), state, media)


def _jid(user: str, server: str = "") -> Any:
    from neonize.utils.jid import build_jid

    return build_jid(user, server) if server else build_jid(user)


def send_text(client: Any, jid_user: str, text: str, server: str = "") -> Any:
    return client.send_message(_jid(jid_user, server), text)


def send_built(client: Any, jid_user: str, message: Any, server: str = "") -> Any:
    """Send a message neonize's builders made (media)."""
    return client.send_message(_jid(jid_user, server), message)


def joined_groups(client: Any) -> set[str]:
    """``<user>@g.us`` of every group the account is in."""
    return {f"{group.JID.User}@{group.JID.Server}" for group in client.get_joined_groups()}


def prepare_session_dir(path: Path, *, sqlite: bool = True) -> None:
    """Create the session folder 0700 and (with the SQLite store) the session database 0600
    before neonize opens it."""
    private_dir(path)
    if not sqlite:  # the session lives in PostgreSQL; the folder keeps caches only
        return
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


def proxy_settings(address: str | None) -> Any:
    """neonize's proxy settings for WHATSAPP_PROXY (None: connect directly)."""
    if not address:
        return None
    from neonize._binder import ProxySettings

    return ProxySettings(proxy_address=address)


def create_session_store(database: str, closed_proxy: str) -> None:
    """Have whatsmeow create (or upgrade) its session tables in ``database`` (a SQLite file or
    a ``postgres://`` URL) without reaching WhatsApp: one connect through ``closed_proxy`` (a
    loopback port nobody listens on) opens the store, then fails to dial. How ``wa-trio session``
    gets whatsmeow's own schema in the store it copies a session into (blocking)."""
    client = new_client(database)
    with contextlib.suppress(Exception):  # the dial fails by design; the store is open by then
        client.connect(proxy_settings(closed_proxy))
    with contextlib.suppress(Exception):
        client.stop()
