"""KeyedLock: one block per key at a time, in arrival order, and no entry left behind."""

from __future__ import annotations

import asyncio

import pytest

from storage.keyed_lock import KeyedLock


async def test_blocks_of_one_key_run_one_at_a_time_in_arrival_order_and_other_keys_run_meanwhile() -> None:
    locks = KeyedLock()
    order: list[str] = []
    gate = asyncio.Event()

    async def block(key: str, name: str, wait: bool = False) -> None:
        async with locks(key):
            order.append(f"{name} in")
            if wait:
                await gate.wait()
            order.append(f"{name} out")

    first = asyncio.ensure_future(block("g1", "a", wait=True))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(block("g1", name)) for name in ("b", "c")]
    other = asyncio.ensure_future(block("g2", "x"))
    await other
    assert order == ["a in", "x in", "x out"]
    gate.set()
    await asyncio.gather(first, *later)
    assert order[3:] == ["a out", "b in", "b out", "c in", "c out"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_or_a_block_that_raises_leaves_no_entry() -> None:
    locks = KeyedLock()
    gate = asyncio.Event()

    async def hold() -> None:
        async with locks("g"):
            await gate.wait()

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    assert len(locks) == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate.set()
    await holder
    with pytest.raises(RuntimeError):
        async with locks("g"):
            raise RuntimeError("boom")
    assert len(locks) == 0
