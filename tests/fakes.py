"""A stand-in for neonize's NewClient at the client boundary only, behaving as the real one
does (audited against neonize 0.5.2 and whatsmeow, issue 21):

- ``connect()`` blocks until ``stop()`` (no timeout of its own), and raises ``NeonizeError``
  when the dial fails;
- registering a handler for a type that is not a neonize event raises ``KeyError`` (neonize's
  ``EVENT_TO_INT`` look-up);
- ``is_on_whatsapp`` may answer with the contact's LID (``<id>@lid``) and raises
  ``IsOnWhatsAppError`` instead of returning an empty list;
- ``PairPhone`` works only while connected and waiting for a login (after a QR event);
- ``me`` is set (on ``Connected``) before later events.

Everything above it (NeonizeTransport, its threads, its trio bridge, the state machine) is the
real code; the events it fires are real neonize protobuf event objects, delivered from a
foreign (non-trio) thread as whatsmeow's Go threads do.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from neonize.events import EVENT_TO_INT, INT_TO_EVENT, ConnectedEv
from neonize.exc import IsOnWhatsAppError, NeonizeError, PairPhoneError
from neonize.proto.Neonize_pb2 import (
    JID,
    Device,
    GroupInfo,
    IsOnWhatsAppResponse,
    SendResponse,
    UploadResponse,
)
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from wa_trio.config.settings import Settings
from wa_trio.core.retry import Backoff
from wa_trio.log import Redactor
from wa_trio.transport.neonize import NeonizeTransport


class GoMapsModel:
    """goneonize's client maps (main.go ``clients``, ``StopSignal``, ``eventChannel``): plain Go
    maps. A write while anything else touches them is Go's "fatal error: concurrent map
    writes" (or "concurrent map read and map write"), which ends the process; here each such
    overlap is recorded in ``violations`` (the tests assert there are none)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writing = 0
        self.reading = 0
        self._active: list[str] = []  # what touches the maps now (for the report)
        self.violations: list[str] = []
        self.finalizer_stops: list[bytes] = []  # Go's Stop from a dropped client's finalizer

    @contextmanager
    def access(self, what: str, *, write: bool, hold: float = 0.002) -> Iterator[None]:
        with self._lock:
            if self.writing or (write and self.reading):
                self.violations.append(f"{what} (during: {', '.join(self._active)})")
            if write:
                self.writing += 1
            else:
                self.reading += 1
            self._active.append(what)
        try:
            time.sleep(hold)  # a map access takes a moment
            yield
        finally:
            with self._lock:
                if write:
                    self.writing -= 1
                else:
                    self.reading -= 1
                self._active.remove(what)


GO_MAPS_MODEL = GoMapsModel()  # process-wide, as goneonize's maps are


def _reads_maps(method: Callable[..., Any]) -> Callable[..., Any]:
    """A goneonize export: it reads ``clients[id]`` on its first line, and never again."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with GO_MAPS_MODEL.access(f"{method.__name__} reads the client maps", write=False):
            pass
        return method(self, *args, **kwargs)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


def _go_stop(uuid: bytes) -> None:
    """What neonize's finalizer calls (client.py ``NewClient._release_ffi``: Go's ``Stop``, a
    write of the client maps from the garbage collector, at whatever moment it runs: outside
    any guard). Counted, not timed: whether it overlaps another access is up to the collector;
    the transport detaches the finalizer once it stopped the client itself."""
    GO_MAPS_MODEL.finalizer_stops.append(uuid)


class _EventRegistry:
    def __init__(self, client: Any = None) -> None:
        self.handlers: dict[type, Callable[[Any, Any], None]] = {}
        self.qr_handler: Callable[[Any, bytes], None] | None = None
        self.client = client

    def execute(self, _uuid: Any, binary: Any, _size: Any, code: int) -> None:
        """neonize events.py ``Event.execute``: event 0 is the account's "me" (FetchMe, sent
        by goneonize's ``CallbackFunction`` right after it read the client maps): it sets
        ``client.me`` and calls no handler."""
        if code == 0:
            if self.client is not None:
                self.client.me = binary
            return
        handler = self.handlers.get(INT_TO_EVENT[code])
        if handler is not None:
            handler(self.client, binary)  # the double passes the event itself, not its bytes

    def __call__(self, event_type: type) -> Callable[[Callable[[Any, Any], None]], None]:
        EVENT_TO_INT[event_type]  # like neonize: an unknown type raises KeyError

        def register(fn: Callable[[Any, Any], None]) -> None:
            self.handlers[event_type] = fn

        return register

    def qr(self, fn: Callable[[Any, bytes], None]) -> None:
        self.qr_handler = fn


class FakeClient:
    def __init__(
        self,
        database: str,
        *,
        not_on_whatsapp: set[str] | None = None,
        send_error: str | None = None,
        send_gate: threading.Event | None = None,
        answer_with_lid: bool = False,
        lookup_error: str | None = None,
        dial_error: str | None = None,
        groups: set[str] | None = None,
        ignores_stop_while_waiting: bool = False,
        early_stops_ignored: int = 0,
    ) -> None:
        self.ignores_stop_while_waiting = ignores_stop_while_waiting
        #: stops that come before goneonize's ``Neonize`` wrote ``StopSignal`` cancel nothing
        self.early_stops_ignored = early_stops_ignored
        self.uuid = f"fake-{id(self)}".encode()
        # client.py ``NewClient.__init__``: Go's Stop when the client is garbage-collected
        self._stop_finalizer = weakref.finalize(self, _go_stop, self.uuid)
        self.groups = groups or set()  # "<digits>@g.us" the account is in
        self.group_lookups = 0
        self.built: list[dict[str, Any]] = []  # every builder call: kind, bytes, options
        self.database = database
        self.event = _EventRegistry(self)
        self.sent: list[tuple[str, str]] = []
        self.sent_built: list[tuple[str, e2e.Message]] = []
        self.lookups: list[str] = []
        self.not_on_whatsapp = not_on_whatsapp or set()
        self.send_error = send_error
        self.send_gate = send_gate  # when set: a send blocks until the gate opens (a hung send)
        self.sending = 0
        self.stopped = threading.Event()
        self.ends_with: str | None = None  # connect() raises this when it returns
        self.connects = 0
        self.me: Any = None
        self.presences: list[tuple[str, str]] = []
        self.answer_with_lid = answer_with_lid
        self.lookup_error = lookup_error
        self.dial_error = dial_error
        self.stops = 0
        self.waiting_for_login = False
        self.pair_display_names: list[str] = []
        #: how WhatsApp registered a number (query -> JID user): an older Brazilian mobile
        #: answers without its 9th digit (whatsmeow's usync answer carries the canonical JID)
        self.canonical: dict[str, str] = {}
        self.lid_to_pn: dict[str, str] = {}  # whatsmeow's LID store (LID user -> number)

    # blocking calls (run in worker threads by the transport)
    def connect(self, proxy: Any = None) -> None:
        self.connects += 1
        self.stopped.clear()
        if self.dial_error is not None:
            raise NeonizeError(self.dial_error)
        # goneonize ``Neonize`` (main.go): StopSignal, eventChannel and clients written first
        with GO_MAPS_MODEL.access("Neonize writes the client maps", write=True):
            pass
        if self.me is not None:  # a logged-in session: after the dial, CallbackFunction
            self.fetch_me()  # reads the maps and sends event 0 (a login: after its QR phase)
        self.stopped.wait()  # like whatsmeow: returns only after stop()
        failure, self.ends_with = self.ends_with, None
        if failure is not None:
            raise NeonizeError(failure)

    def fetch_me(self) -> None:
        """goneonize ``CallbackFunction``: reads ``eventChannel[id]`` and ``clients[id]``
        (``FetchMe``), then event 0 through ``Event.execute`` (on this Go thread)."""
        with GO_MAPS_MODEL.access("CallbackFunction reads the client maps", write=False):
            pass
        self.event.execute(self.uuid, self.me or Device(), 0, 0)

    def receive_server_error_receipt(self) -> None:
        """whatsmeow dispatches a ``server-error`` receipt; goneonize's ``EncodeReceipts``
        (utils/encoder.go) has no case for it and leaves the required ``Type`` unset, so
        ``CallbackFunction``'s ``proto.Marshal`` fails and ``Neonize`` returns that error:
        connect() raises while whatsmeow's client stays connected (no further events)."""
        self.ends_with = "proto: required field neonize.Receipt.Type not set"
        self.stopped.set()  # connect() returns (here: by the same wake-up a stop uses)

    def finish_login(self, status: str = "success") -> None:
        """The QR channel ends (goneonize ``Neonize``'s QR loop): its last status goes to the
        login-status call back on the Go thread, then ``CallbackFunction`` reads the maps."""
        self.waiting_for_login = False
        on_status = getattr(self, "_NewClient__onLoginStatus", None)
        thread = threading.Thread(target=self._finish_login, args=(on_status, status))
        thread.start()
        thread.join()

    def _finish_login(self, on_status: Any, status: str) -> None:
        if on_status is not None:
            on_status(self.uuid, status)
        self.fetch_me()

    def stop(self) -> None:
        self.stops += 1
        if self.early_stops_ignored > 0:
            self.early_stops_ignored -= 1  # came before StopSignal was written: a no-op
            return
        with GO_MAPS_MODEL.access("Stop deletes from the client maps", write=True):
            pass
        if self.ignores_stop_while_waiting and self.waiting_for_login:
            # issue 27's audit of neonize 0.5.2: once the QR codes ran out (or a pairing
            # failed), goneonize's ``Neonize`` (main.go) waits for a device id that never
            # comes, and ``Stop`` does not end that wait: connect() never returns
            return
        self.waiting_for_login = False
        self.stopped.set()

    @_reads_maps
    def is_on_whatsapp(self, *numbers: str) -> list[IsOnWhatsAppResponse]:
        self.lookups.extend(numbers)
        if self.lookup_error is not None:
            raise IsOnWhatsAppError(self.lookup_error)
        return [
            IsOnWhatsAppResponse(
                Query=n,
                IsIn=n not in self.not_on_whatsapp,
                JID=(
                    JID(User="98765432101234", Server="lid")
                    if self.answer_with_lid
                    else JID(User=self.canonical.get(n, n.lstrip("+")), Server="s.whatsapp.net")
                ),
            )
            for n in numbers
        ]

    @_reads_maps
    def send_message(self, to: JID, message: Any) -> SendResponse:
        """Text (a str) or a built message (a waE2E Message), as neonize's ``send_message``."""
        if self.send_gate is not None:
            self.sending += 1
            self.send_gate.wait(60)
        if self.send_error:
            raise RuntimeError(self.send_error)
        if isinstance(message, str):
            self.sent.append((to.User, message))
        else:
            self.sent_built.append((f"{to.User}@{to.Server}", message))
            self.sent.append((to.User, ""))
        return SendResponse(ID=f"3EB0{len(self.sent):016X}", Timestamp=1_700_000_000)

    # neonize's image and document builders (our code builds the other kinds around ``upload``):
    # each uploads the bytes (counted) and returns a real waE2E Message
    def _built(self, kind: str, data: bytes, **options: Any) -> None:
        assert isinstance(data, bytes), "a builder must get our bytes, never a URL or a path"
        self.built.append({"kind": kind, "data": data, **options})

    @_reads_maps
    def build_image_message(self, file: bytes, caption: str | None = None) -> e2e.Message:
        self._built("image", file, caption=caption)
        return e2e.Message(imageMessage=e2e.ImageMessage(mimetype="image/png", caption=caption))

    @_reads_maps
    def build_document_message(
        self,
        file: bytes,
        caption: str | None = None,
        title: str | None = None,
        filename: str | None = None,
        mimetype: str | None = None,
    ) -> e2e.Message:
        self._built("document", file, caption=caption, filename=filename, mimetype=mimetype)
        return e2e.Message(
            documentMessage=e2e.DocumentMessage(
                mimetype=mimetype, fileName=filename, title=title, caption=caption
            )
        )

    @_reads_maps
    def upload(self, binary: bytes, media_type: Any = None) -> UploadResponse:
        """neonize client.py ``NewClient.upload``: whatsmeow's ``Upload`` encrypts and uploads
        the bytes and answers with an ``UploadResponse`` (the media type only picks the MMS path
        and the key's info string); here the upload is recorded, not sent."""
        assert isinstance(binary, bytes), "an upload gets our bytes"
        kind = getattr(media_type, "name", "MediaDocument")
        self.built.append({"kind": kind, "data": binary})
        digest = hashlib.sha256(binary).digest()
        return UploadResponse(
            url=f"https://mmg.whatsapp.net/{digest.hex()[:16]}", DirectPath="/v/t62/x",
            MediaKey=b"k" * 32, FileEncSHA256=digest, FileSHA256=digest, FileLength=len(binary),
        )  # fmt: skip

    @_reads_maps
    def get_joined_groups(self) -> list[GroupInfo]:
        self.group_lookups += 1
        return [
            GroupInfo(JID=JID(User=jid.split("@")[0], Server="g.us")) for jid in sorted(self.groups)
        ]

    @_reads_maps
    def send_chat_presence(self, jid: JID, state: Any, media: Any) -> None:
        self.presences.append((jid.User, state.name))

    @_reads_maps
    def get_pn_from_lid(self, jid: JID) -> JID:
        """neonize client.py ``get_pn_from_lid``: whatsmeow's LID store; an unknown LID raises
        ``GetJIDFromStoreError`` (the Go side answers with an error, not an empty JID)."""
        from neonize.exc import GetJIDFromStoreError

        number = self.lid_to_pn.get(jid.User)
        if number is None:
            raise GetJIDFromStoreError(f"no phone number for lid {jid.User}")
        return JID(User=number, Server="s.whatsapp.net")

    @_reads_maps
    def PairPhone(
        self, phone: str, push: bool, client_name: Any = None, client_type: Any = None
    ) -> str:
        """neonize's signature (client.py ``NewClient.PairPhone``); the display name it would
        send is recorded: ``"%s (%s)" % (client_type.name, client_name.name)``, with
        ``client_type`` from the device properties when not given (UNKNOWN without a
        platformType) and ``client_name`` LINUX by default."""
        from neonize.utils.enum import ClientName, ClientType

        kind = client_type if client_type is not None else ClientType.UNKNOWN
        self.pair_display_names.append(f"{kind.name} ({(client_name or ClientName.LINUX).name})")
        if not self.waiting_for_login or self.stopped.is_set():
            raise PairPhoneError("not connected and waiting for a login")
        return "ABCD-EFGH"

    # test driver: deliver an event from a foreign thread, like whatsmeow does
    def fire(self, event: Any) -> None:
        if isinstance(event, ConnectedEv) and self.me is None:
            self.me = Device(JID=JID(User="5511988887777", Server="s.whatsapp.net"))
        assert type(event) in self.event.handlers
        code = EVENT_TO_INT[type(event)]  # through Event.execute, as goneonize delivers it
        thread = threading.Thread(target=self.event.execute, args=(self.uuid, event, 0, code))
        thread.start()
        thread.join()

    def fire_qr(self, payload: str) -> None:
        assert self.event.qr_handler is not None
        self.waiting_for_login = True
        thread = threading.Thread(target=self.event.qr_handler, args=(self, payload.encode()))
        thread.start()
        thread.join()


def fake_neonize_transport(
    settings: Settings,
    clients: list[FakeClient],
    *,
    qr_stale_after: float = 65.0,
    max_connects: int = 500,
    abandon_after: float = 10.0,
    **kwargs: object,
) -> NeonizeTransport:
    """The real NeonizeTransport on FakeClients (each one created is appended to ``clients``),
    with a quick backoff and the QR block written to a string instead of the terminal."""

    def factory(database: str) -> FakeClient:
        client = FakeClient(database, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    return NeonizeTransport(
        settings,
        Redactor(True),
        client_factory=factory,
        backoff=Backoff(initial=0.05, cap=0.1),
        qr_out=io.StringIO(),
        qr_stale_after=qr_stale_after,
        max_connects=max_connects,
        abandon_after=abandon_after,
    )
