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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import eliot
import segno
import trio

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


class GoMaps:
    """neonize keeps every client of the process in plain Go maps (``clients``,
    ``StopSignal``, ``eventChannel`` in goneonize/main.go), written without a lock when a client
    starts (``Neonize``) and stops (``Stop``) and read by every other call. Two accounts
    starting or stopping at once abort the whole process ("fatal error: concurrent map
    writes", seen here with 20 accounts); a read during a write can too. So, process-wide:
    a start or stop is a *writer* (alone), every other call a *reader* (together), writers
    first. All our neonize calls are dispatched from the one trio loop, so a trio-side lock
    is enough."""

    def __init__(self) -> None:
        self._changed = trio.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._changed:
            while self._writing or self._writers_waiting:
                await self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                async with self._changed:
                    self._readers -= 1
                    self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._changed:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    await self._changed.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                async with self._changed:
                    self._writing = False
                    self._changed.notify_all()


GO_MAPS = GoMaps()


async def go_call(
    fn: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> Any:
    """A neonize call that reads neonize's client maps (anything but a start or a stop), in a
    worker thread (abandoned on cancel: a Go call cannot be interrupted)."""
    async with GO_MAPS.reading():
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter, abandon_on_cancel=True)


REGISTER_WINDOW = 3.0  # at most this long a starting client holds neonize's maps (GoMaps)


async def connect_registered(
    nursery: trio.Nursery, connect: Callable[[], Any], registered: trio.Event
) -> None:
    """Run ``connect`` (neonize's blocking connect, for as long as the connection lives) in a
    worker thread as a writer of neonize's client maps until the client registered itself:
    ``connect`` returned, or ``registered`` was set (the client said anything: an event), or
    ``REGISTER_WINDOW`` passed. The writer's hold runs in ``nursery``."""

    async def hold(*, task_status: trio.TaskStatus[None]) -> None:
        async with GO_MAPS.writing():
            task_status.started()
            with trio.move_on_after(REGISTER_WINDOW):
                await registered.wait()

    await nursery.start(hold)
    try:
        # a limiter of its own: connect() holds its thread for the session's whole life, and
        # 40 accounts on trio's default limiter (40 tokens) stalled every other to_thread
        # call of the process (sends 5 s late, a shutdown of 2 min 13 s; issue 27)
        await trio.to_thread.run_sync(
            connect, abandon_on_cancel=True, limiter=trio.CapacityLimiter(1)
        )
    finally:
        registered.set()
