"""Account safety, the pure and the store parts (issue 19): opt-out matching, the order of the
rules, received messages from real neonize event objects, contacts.db, the 463 class, the new
states, and the CLI's opt-out list."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from neonize.events import MessageEv, TemporaryBanEv
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from wa_trio.account_safety import AccountSafety
from wa_trio.cli.main import main
from wa_trio.config.settings import Settings
from wa_trio.core.identity import bsuid, person_key
from wa_trio.core.retry import classify_send_error
from wa_trio.core.safety_rules import (
    UNANSWERED_RECHECK,
    is_optout,
    judge,
    keyword_set,
    over_daily_limit,
)
from wa_trio.log import Redactor
from wa_trio.metrics import Metrics
from wa_trio.stores.sqlite.contacts import ContactStore
from wa_trio.transport.inbound import InboundMessage, as_event
from wa_trio.transport.neonize.events import inbound_of, signal_of
from wa_trio.transport.states import ConnectionState as S
from wa_trio.transport.states import Signal, next_state

PERSON = JID(User="5511988887777", Server="s.whatsapp.net")
KEYWORDS = keyword_set(["STOP", "PARAR", "SAIR", "CANCELAR", "UNSUBSCRIBE"])


def message_event(body: e2e.Message, **source: Any) -> MessageEv:
    fields: dict[str, Any] = {"Chat": PERSON, "Sender": PERSON, "IsFromMe": False}
    fields.update(source)
    return MessageEv(
        Info=MessageInfo(
            MessageSource=MessageSource(**fields), ID="3EB0IN", Timestamp=1764111111000
        ),  # ms: EncodeMessageInfo
        Message=body,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", True),
        ("stop", True),
        ("  Stop!  ", True),
        ("Parár", True),
        ("cancelar.", True),
        ("sair?", True),
        ("please stop", False),
        ("stop sending me promos", False),
        ("STOPP", False),
        ("", False),
        (None, False),
        ("stop" * 40, False),
    ],
)
def test_opt_out_keywords_match_the_whole_message_only(text: str | None, expected: bool) -> None:
    assert is_optout(text, KEYWORDS) is expected


def test_the_rules_in_their_order() -> None:
    base: dict[str, Any] = {
        "opted_out": False,
        "unanswered": 0,
        "known": True,
        "limit": 3,
        "action": "dlq",
        "reachout_until": 0.0,
        "now": 1000.0,
    }
    assert judge(**base) is None
    opted = judge(**{**base, "opted_out": True, "unanswered": 9})
    assert opted is not None and (opted.code, opted.dead_letter) == ("opted_out", True)
    over = judge(**{**base, "unanswered": 3})
    assert over is not None and (over.code, over.dead_letter) == ("unanswered_limit", True)
    assert judge(**{**base, "unanswered": 2}) is None
    delayed = judge(**{**base, "unanswered": 3, "action": "delay"})
    assert delayed is not None and not delayed.dead_letter and delayed.wait == UNANSWERED_RECHECK
    assert judge(**{**base, "unanswered": 99, "limit": None}) is None
    paused = judge(**{**base, "known": False, "reachout_until": 1600.0})
    assert paused is not None and (paused.code, paused.wait) == ("reachout_paused", 600.0)
    assert judge(**{**base, "known": True, "reachout_until": 1600.0}) is None  # known chat
    assert judge(**{**base, "known": False, "reachout_until": 900.0}) is None  # over


def test_received_messages_from_real_neonize_events() -> None:
    text = inbound_of(message_event(e2e.Message(conversation="Pode ser amanhã?")))
    assert text == InboundMessage(
        "default", "3EB0IN", "+5511988887777", 1764111111.0, "text", "Pode ser amanhã?"
    )
    reply = inbound_of(
        message_event(
            e2e.Message(
                extendedTextMessage=e2e.ExtendedTextMessage(
                    text="sim", contextInfo=e2e.ContextInfo(stanzaID="3EB0SENT")
                )
            )
        )
    )
    assert reply is not None and (reply.text, reply.reply_to) == ("sim", "3EB0SENT")
    image = inbound_of(
        message_event(
            e2e.Message(
                imageMessage=e2e.ImageMessage(
                    caption="a foto", mimetype="image/jpeg", fileLength=2048
                )
            )
        )
    )
    assert image is not None
    assert (image.kind, image.text, image.mime_type, image.size) == (
        "image",
        "a foto",
        "image/jpeg",
        2048,
    )
    voice = inbound_of(
        message_event(e2e.Message(audioMessage=e2e.AudioMessage(PTT=True, mimetype="audio/ogg")))
    )
    assert voice is not None and voice.kind == "voice"
    group = inbound_of(
        message_event(
            e2e.Message(conversation="oi"),
            Chat=JID(User="120363025246125486", Server="g.us"),
            Sender=JID(User="98765432101234", Server="lid"),
            SenderAlt=PERSON,
            IsGroup=True,
        )
    )
    assert group is not None
    assert (group.group, group.sender, group.direct) == (
        "120363025246125486@g.us",
        "+5511988887777",
        False,
    )
    hidden = inbound_of(
        message_event(e2e.Message(conversation="x"), Sender=JID(User="9", Server="lid"))
    )
    assert hidden is not None and hidden.sender is None and not hidden.direct
    assert inbound_of(message_event(e2e.Message(conversation="mine"), IsFromMe=True)) is None
    protocol = e2e.Message(protocolMessage=e2e.ProtocolMessage(type=0))
    assert inbound_of(message_event(protocol)) is None


def test_the_published_json_follows_its_schema() -> None:
    import jsonschema

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "inbound-message.schema.json").read_text()
    )
    message = inbound_of(
        message_event(e2e.Message(imageMessage=e2e.ImageMessage(mimetype="image/png")))
    )
    assert message is not None
    event = as_event(message)
    jsonschema.validate(event, schema)
    assert event["media"] == {"mime_type": "image/png", "size": None}
    assert event["timestamp"].startswith("2025-11-25T")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**event, "sender": "5511"}, schema)


def test_463_is_permanent_and_its_own_code() -> None:
    assert classify_send_error("server returned error 463") == ("reachout_timelocked", False)
    assert classify_send_error("server returned error 503") == ("whatsapp_unavailable", True)


def test_ban_end_and_the_failed_state() -> None:
    signal = signal_of(TemporaryBanEv(Code=TemporaryBanEv.BLOCKED_BY_USERS, Expire=90))
    assert (signal.kind, signal.seconds) == ("temporary_ban", 90.0)
    ban = next_state(S.CONNECTED, signal)
    assert ban.state is S.BANNED and not ban.may_reconnect
    assert ban.loud is not None and "reconnects by itself" in ban.loud
    failed = next_state(S.DISCONNECTED, Signal("failed", detail="3 failed connects in a row"))
    assert failed.state is S.FAILED and not failed.may_reconnect
    assert failed.loud is not None and "3 failed connects" in failed.loud
    assert next_state(S.FAILED, Signal("dial_failed")).state is S.FAILED


def test_the_contact_store(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "contacts.db")
    assert oct((tmp_path / "contacts.db").stat().st_mode & 0o777) == "0o600"
    assert store.add_optout("+5511988887777", "inbound", now=1.0)
    assert not store.add_optout("+5511988887777", "cli:ana")
    assert [o.source for o in store.optouts()] == ["inbound"]
    assert store.claim_reply("+5511988887777") and not store.claim_reply("+5511988887777")
    store.record({"+5511900000001": 2, "+5511900000002": 1}, {}, now=5.0)
    store.record({"+5511900000001": 1}, {"+5511900000002": 6.0}, now=7.0)
    snapshot = store.snapshot()
    assert snapshot.unanswered == {"+5511900000001": 3, "+5511900000002": 0}
    assert snapshot.optouts == {"+5511988887777"}
    assert store.remove_optout("+5511988887777") and not store.remove_optout("+5511988887777")
    store.close()


async def test_account_safety_counts_resets_and_sees_other_processes(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    settings = Settings.from_env(make_env(WHATSAPP_UNANSWERED_LIMIT="2"))
    metrics = Metrics("q", "q.dlq")
    clock = [1000.0]
    store = ContactStore(tmp_path / "contacts.db")
    safety = AccountSafety(settings, metrics, Redactor(True), store, clock=lambda: clock[0])
    number = "+5511900000001"
    assert safety.verdict(number) is None
    safety.after_send(number)
    safety.after_send(number)
    over = safety.verdict(number)
    assert over is not None and over.code == "unanswered_limit"
    assert metrics.registry.get_sample_value("whatsapp_unanswered_highest") == 2
    safety.on_inbound(InboundMessage("default", "in1", number, 1001.0, "text", "ok, obrigado"))
    assert safety.verdict(number) is None
    safety.on_inbound(InboundMessage("default", "in2", "+5511900000002", 1002.0, "text", "Stop"))
    assert safety.verdict("+5511900000002") is not None
    assert metrics.registry.get_sample_value("whatsapp_optouts_total") == 1
    await safety.flush()
    other = ContactStore(tmp_path / "contacts.db")  # the CLI, another connection
    assert {o.number for o in other.optouts()} == {"+5511900000002"}
    other.add_optout("+5511900000003", "cli:ana")
    other.remove_optout("+5511900000002")
    await safety.flush()
    assert safety.verdict("+5511900000003") is not None
    assert safety.verdict("+5511900000002") is None
    # 463: new contacts wait, known chats go on
    safety.after_failure("reachout_timelocked")
    paused = safety.verdict("+5511999999999")
    assert paused is not None and paused.code == "reachout_paused"
    assert paused.wait == settings.reachout_pause
    assert safety.verdict(number) is None  # known
    clock[0] += settings.reachout_pause + 1
    assert safety.verdict("+5511999999999") is None
    other.close()
    safety.close()


def test_the_optout_command(cli_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optout", "add", "+55 (11) 98888-7777"]) == 0
    assert main(["optout", "add", "+5511988887777"]) == 0
    assert "nothing to change" in capsys.readouterr().err
    assert main(["optout", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [entry["number"] for entry in listed] == ["+5511988887777"]
    assert listed[0]["source"].startswith("cli:")
    assert main(["optout", "add", "not a number"]) == 1
    assert main(["optout", "remove", "+5511988887777"]) == 0
    err = capsys.readouterr().err
    assert "+5511988887777" not in err  # masked in production
    assert main(["optout", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_many_accounts_open_the_shared_list_at_once(tmp_path: Path) -> None:
    """The accounts of one process open optouts.db together; two connections switching one
    file to WAL at the same moment make SQLite answer "locked" at once (no busy wait: it would
    deadlock), which failed start-up on a loaded CI machine. Opens now take turns and retry."""
    import threading

    for round_ in range(5):
        path = tmp_path / f"optouts-{round_}.db"
        start = threading.Barrier(12)
        stores: list[ContactStore] = []
        errors: list[BaseException] = []

        def open_one(
            path: Path = path,
            start: threading.Barrier = start,
            stores: list[ContactStore] = stores,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                stores.append(ContactStore(path))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(stores) == 12
        stores[0].add_optout("+5511988887777", "inbound:a")
        assert all(store.snapshot().optouts == {"+5511988887777"} for store in stores)
        for store in stores:
            store.close()


@pytest.mark.parametrize(
    ("number", "key"),
    [
        ("+551187654321", "+5511987654321"),  # Brazil: an old mobile gains its 9th digit
        ("+55 11 98765-4321", "+5511987654321"),
        ("+551133334444", "+551133334444"),  # a Brazilian landline stays
        ("+5215512345678", "+525512345678"),  # Mexico: the old mobile 1 goes
        ("+52 55 1234 5678", "+525512345678"),
        ("+541123456789", "+5491123456789"),  # Argentina: mobiles take the 9
        ("+5491123456789", "+5491123456789"),
        ("+447911123456", "+447911123456"),  # anyone else: unchanged
    ],
)
def test_one_key_per_person(number: str, key: str) -> None:
    assert person_key(number) == key


async def test_a_stop_in_one_form_stops_jobs_in_the_other(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Issue 27: a STOP from WhatsApp id 551187654321 did not stop a job to +55 11 98765-4321,
    nor the other way round; a Mexican STOP arrives as +52155... and did not stop +52 55...."""
    settings = Settings.from_env(make_env())
    store = ContactStore(tmp_path / "contacts.db")
    safety = AccountSafety(settings, Metrics("q", "q.dlq"), Redactor(True), store)
    safety.on_inbound(InboundMessage("default", "in1", "+551187654321", 1.0, "text", "STOP"))
    safety.on_inbound(InboundMessage("default", "in2", "+5215512345678", 1.0, "text", "PARAR"))
    for job_destination in ("+5511987654321", "+551187654321", "+525512345678"):
        verdict = safety.verdict(job_destination)
        assert verdict is not None and verdict.code == "opted_out", job_destination
    await safety.flush()
    assert {o.number for o in store.optouts()} == {"+5511987654321", "+525512345678"}
    store.close()
    safety.close()


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("US.13491208655302741918", True),
        ("US.ENT.11815799212886844830", True),  # a parent BSUID
        ("HK.abcXYZ123", True),
        ("us.1349", False),  # the country code is upper case
        ("US.", False),
        ("+5511987654321", False),
        ("US.1349 1208", False),
        (12345, False),
    ],
)
def test_a_bsuid_is_checked_and_is_its_own_key(value: object, valid: bool) -> None:
    assert (bsuid(value) is not None) is valid
    if valid:
        assert isinstance(value, str) and person_key(value) == value


async def test_a_stop_known_only_by_bsuid_stops_the_number_once_linked(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Issue 27 (one identity per person, Cloud API): a user with a username may send STOP
    with no phone number, only Meta's BSUID. It is an opt-out under the BSUID at once, and
    under their number as soon as a webhook carries both (before: dropped, the sender was
    None). And the other way round: a BSUID already linked to a number stands for it."""
    settings = Settings.from_env(make_env())
    store = ContactStore(tmp_path / "contacts.db")
    safety = AccountSafety(settings, Metrics("q", "q.dlq"), Redactor(True), store)
    user = "BR.13491208655302741918"

    def received(sender: str | None, user_id: str, text: str, n: int) -> InboundMessage:
        return InboundMessage("default", f"in{n}", sender, 1.0, "text", text, user_id=user_id)

    safety.on_inbound(received(None, user, "STOP", 1))
    assert safety.verdict(user) is not None
    assert safety.verdict("+5511987654321") is None  # not linked yet
    safety.on_inbound(received("+551187654321", user, "thanks", 2))  # old form, same person
    for job_destination in ("+5511987654321", "+55 11 8765-4321"):
        verdict = safety.verdict(job_destination)
        assert verdict is not None and verdict.code == "opted_out", job_destination
    other = "MX.99887766554433221100"
    safety.on_inbound(received("+5215512345678", other, "hola", 3))  # linked first
    safety.on_inbound(received(None, other, "PARAR", 4))  # then a STOP with the BSUID alone
    verdict = safety.verdict("+52 55 1234 5678")
    assert verdict is not None and verdict.code == "opted_out"
    await safety.flush()
    assert {o.number for o in store.optouts()} == {user, "+5511987654321", "+525512345678"}
    store.close()
    safety.close()


@pytest.mark.parametrize(
    ("limit", "in_window", "count", "oldest", "held_for"),
    [
        (None, False, 10**6, 0.0, None),  # off
        (250, False, 249, 1000.0, None),  # room for one more
        (250, False, 250, 1000.0, 86400.0 - 500.0),  # a new one waits for the oldest to leave
        (250, True, 250, 1000.0, None),  # Meta counts users: one already in the window goes
        (2, False, 2, 1500.0 - 86400.0, 1.0),  # the oldest leaves now: looked at again soon
    ],
)
def test_the_daily_limit_holds_only_new_recipients(
    limit: int | None, in_window: bool, count: int, oldest: float, held_for: float | None
) -> None:
    verdict = over_daily_limit(
        limit=limit, in_window=in_window, count=count, oldest=oldest, now=1500.0
    )
    if held_for is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.code == "daily_limit"
        assert not verdict.dead_letter and verdict.wait == held_for


async def test_the_daily_limit_counts_the_last_24_hours_across_a_restart(
    make_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Issue 33: WHATSAPP_CLOUD_DAILY_LIMIT=2 on the Cloud API: two recipients sent to, a third
    is held (parked, not dead-lettered) until the first leaves the 24-hour window; the first
    two may still be written to; a restarted worker reads the window back from its store."""
    env = make_env(
        WHATSAPP_TRANSPORT="cloud-api",
        WHATSAPP_CLOUD_PHONE_NUMBER_ID="106540352242922",
        WHATSAPP_CLOUD_ACCESS_TOKEN="EAAtoken",
        WHATSAPP_CLOUD_APP_SECRET="app-secret",
        WHATSAPP_CLOUD_VERIFY_TOKEN="verify-token",
        WHATSAPP_CLOUD_DAILY_LIMIT="2",
        WHATSAPP_UNANSWERED_LIMIT="off",
    )
    settings = Settings.from_env(env)
    now = [time.time()]
    store = ContactStore(tmp_path / "contacts.db")
    safety = AccountSafety(
        settings, Metrics("q", "q.dlq"), Redactor(True), store, clock=lambda: now[0]
    )
    safety.after_send("+5511999990001")
    await safety.flush()  # as the flush task does every second
    now[0] += 3600
    safety.after_send("+5511999990002")
    held = safety.verdict("+5511999990003")
    assert held is not None and held.code == "daily_limit" and not held.dead_letter
    assert held.wait == pytest.approx(86400 - 3600)
    assert safety.verdict("+55 11 99999-0001") is None  # already in the window
    await safety.flush()
    safety.close()
    store = ContactStore(tmp_path / "contacts.db")
    again = AccountSafety(
        settings, Metrics("q", "q.dlq"), Redactor(True), store, clock=lambda: now[0]
    )
    assert again.verdict("+5511999990003") is not None  # the window came back from the store
    now[0] += 86400 - 3600 + 1  # the first recipient left the window
    assert again.verdict("+5511999990003") is None
    again.close()
