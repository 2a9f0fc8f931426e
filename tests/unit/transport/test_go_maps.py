"""neonize's client maps are plain Go maps: our guard lets starts and stops run alone and
every other call together (transport/neonize/runtime.GoMaps)."""

from __future__ import annotations

import trio
import trio.testing

from wa_trio.transport.neonize.library import GoMaps


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
