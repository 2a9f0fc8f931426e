"""neonize's client maps are plain Go maps: our guard lets starts and stops run alone and
every other call together (transport/neonize/go_maps.py)."""

from __future__ import annotations

import threading
from functools import partial

import trio
import trio.testing

from wa_trio.transport.neonize.go_maps import GoMaps


async def test_readers_share_writers_are_alone_and_go_first() -> None:
    guard = GoMaps()
    log: list[str] = []
    active = {"readers": 0, "writers": 0}
    most = {"readers": 0}

    async def reader(name: str, hold: float) -> None:
        async with guard.reading():
            active["readers"] += 1
            most["readers"] = max(most["readers"], active["readers"])
            assert active["writers"] == 0
            log.append(f"{name} in")
            await trio.sleep(hold)
            active["readers"] -= 1

    async def writer(name: str) -> None:
        async with guard.writing():
            assert active == {"readers": 0, "writers": 0}
            active["writers"] += 1
            log.append(f"{name} in")
            await trio.sleep(0.1)
            active["writers"] -= 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, "r1", 0.3)
        nursery.start_soon(reader, "r2", 0.3)
        await trio.sleep(0.05)
        nursery.start_soon(writer, "w1")
        await trio.sleep(0.05)
        nursery.start_soon(reader, "r3", 0.1)  # arrives while w1 waits: after it
        nursery.start_soon(writer, "w2")
    assert most["readers"] == 2
    assert log.index("w1 in") < log.index("r3 in")
    assert log.index("w2 in") < log.index("r3 in")  # writers first, one at a time
    assert set(log[:2]) == {"r1 in", "r2 in"}  # trio may start them in either order


async def test_a_cancelled_waiter_leaves_the_guard_usable() -> None:
    guard = GoMaps()
    async with trio.open_nursery() as nursery:

        async def hold() -> None:
            async with guard.writing():
                await trio.sleep(0.2)

        nursery.start_soon(hold)
        await trio.sleep(0.01)
        with trio.move_on_after(0.05):
            async with guard.writing():
                raise AssertionError("a second writer got in")
        with trio.move_on_after(0.05):
            async with guard.reading():
                raise AssertionError("a reader got in during a write")
    with trio.fail_after(1):
        async with guard.reading(), guard.reading():
            pass
        async with guard.writing():
            pass


async def test_a_long_call_holds_the_maps_only_while_it_enters_go() -> None:
    """goneonize's exports read ``clients[id]`` on their first line (main.go ``SendMessage``,
    ``Upload``, ...): a 75 s send must not keep another account's start (a writer) waiting.
    The writer gets in while the send is still running (before: only after it returned)."""
    from wa_trio.transport.neonize.go_maps import ENTRY_HOLD, GO_MAPS, go_call

    gate = threading.Event()
    finished: list[str] = []

    async def long_send() -> None:
        await go_call(partial(gate.wait, 30))
        finished.append("send")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_send)
        await trio.sleep(0.05)  # the send is in Go
        started = trio.current_time()
        with trio.fail_after(10):
            async with GO_MAPS.writing():
                waited = trio.current_time() - started
                assert finished == []  # the send has not returned
        gate.set()
    assert finished == ["send"]
    assert waited <= ENTRY_HOLD + 5  # about ENTRY_HOLD; never the send's whole length


async def test_a_call_cancelled_before_its_turn_never_enters_go() -> None:
    from wa_trio.transport.neonize.go_maps import GO_MAPS, go_call

    entered: list[int] = []
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            async with GO_MAPS.writing():
                await trio.sleep(0.3)

        nursery.start_soon(writer)
        await trio.sleep(0.05)
        with trio.move_on_after(0.1):
            await go_call(entered.append, 1)  # waits for the writer; cancelled meanwhile
    await trio.sleep(0.1)
    assert entered == []
    assert await go_call(entered.append, 2) is None and entered == [2]  # the guard is free


async def test_the_reads_after_a_login_are_covered_until_event_0() -> None:
    """goneonize ``Neonize``: after the QR channel's last status call back, on the same Go
    thread, ``CallbackFunction`` reads ``eventChannel[id]`` and ``clients[id]`` and only then
    sends event 0. Another account's stop (a writer) that comes meanwhile waits for event 0
    (before: it ran during the reads, Go's "concurrent map read and map write")."""
    from tests.fakes import GO_MAPS_MODEL
    from wa_trio.transport.neonize.go_maps import GO_MAPS, LoginReads

    reads = LoginReads(trio.lowlevel.current_trio_token())
    status_called = threading.Event()
    log: list[str] = []

    def go_thread() -> None:  # the Go side of a login that just succeeded
        reads.go_thread_status()  # blocks until a reader is held
        status_called.set()
        with GO_MAPS_MODEL.access("CallbackFunction reads", write=False, hold=0.3):
            log.append("read")
        reads.go_thread_me()

    async def other_accounts_stop() -> None:
        await trio.to_thread.run_sync(status_called.wait)
        async with GO_MAPS.writing():
            with GO_MAPS_MODEL.access("another account's Stop", write=True):
                log.append("stop")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_accounts_stop)
        await trio.to_thread.run_sync(go_thread)
    assert log == ["read", "stop"] and GO_MAPS_MODEL.violations == []
    assert reads.reads_seen == 1
