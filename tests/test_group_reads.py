"""Membership checks that overlap share a read, and never take an answer from an older one."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from handlers.group_reads import GroupReads
from storage.base import GroupAccess, StorageUnavailable
from storage.memory import MemoryStore

GROUP, OTHER = "65f0000000000000000000a1", "65f0000000000000000000b2"
ANA, BEN, CAROL = "65a000000000000000000001", "65a000000000000000000002", "65a000000000000000000003"


class GatedStore(MemoryStore):
    """Each read waits for ``release``; reads are logged with the users they asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.add_group(GROUP, "Maths", [ANA, BEN, CAROL])
        self.add_group(OTHER, "Physics", [ANA])
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def _gate(self, group_id: str, users: tuple[str, ...]) -> None:
        self.asked.append((group_id, users))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail

    async def get_group(self, group_id: str, user_id: str) -> GroupAccess | None:
        await self._gate(group_id, (user_id,))
        return await super().get_group(group_id, user_id)

    async def get_group_for(self, group_id: str, user_ids: Collection[str]) -> dict[str, GroupAccess] | None:
        await self._gate(group_id, tuple(user_ids))
        return await super().get_group_for(group_id, user_ids)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_checks_during_a_read_share_the_next_one_and_see_what_changed_meanwhile() -> None:
    store = GatedStore()
    reads = GroupReads(store)
    first = asyncio.create_task(reads.get(GROUP, ANA))
    await _settle()
    # BEN is removed after the first read began; the checks asked now must see it.
    store._groups[GROUP].members.discard(BEN)
    later = [asyncio.create_task(reads.get(GROUP, user)) for user in (BEN, CAROL, BEN)]
    elsewhere = asyncio.create_task(reads.get(OTHER, ANA))  # another group does not wait
    await _settle()
    assert store.asked == [(GROUP, (ANA,)), (OTHER, (ANA,))]
    store.release.set()
    assert (await first).is_member is True
    answers = await asyncio.gather(*later)
    assert [a.is_member for a in answers if a is not None] == [False, True, False]
    assert (await elsewhere).is_member is True
    assert store.asked[2:] == [(GROUP, (BEN, CAROL))]  # one read for the three waiting checks
    # Idle again: the next check reads at once, alone.
    assert (await reads.get(GROUP, CAROL)).is_member is True  # type: ignore[union-attr]
    assert store.asked[3:] == [(GROUP, (CAROL,))]


async def test_a_failed_shared_read_fails_every_check_it_carried_and_the_next_reads_again() -> None:
    store = GatedStore()
    reads = GroupReads(store)
    first = asyncio.create_task(reads.get(GROUP, ANA))
    await _settle()
    waiting = [asyncio.create_task(reads.get(GROUP, user)) for user in (BEN, CAROL)]
    await _settle()
    store.fail = StorageUnavailable("down")
    store.release.set()
    with pytest.raises(StorageUnavailable):
        await first
    raised = []
    for task in waiting:
        with pytest.raises(StorageUnavailable, match="down") as caught:
            await task
        raised.append(caught.value)
    # Each check raises its own error, caused by the read's: one object raised in every
    # waiting check gathered all of their tracebacks.
    assert raised[0] is not raised[1]
    assert raised[0].__cause__ is raised[1].__cause__ is store.fail
    store.fail = None
    assert (await reads.get(GROUP, BEN)).is_member is True  # type: ignore[union-attr]
    assert await reads.get("65f0000000000000000000ff", ANA) is None
