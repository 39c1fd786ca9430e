"""A user's events run at most ``EVENTS_AT_ONCE_PER_USER`` at a time on a node; the rest wait in order.

Through a real server and python-socketio clients on the embedded store, wrapped so that a
history read takes a while, like a database's, and counts how many run at once; and the slots
themselves, for the orders of giving back and giving up that a socket cannot time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handlers.event_slots import EventSlots
from handlers.events import EVENTS_AT_ONCE_PER_USER
from storage.base import Message
from storage.memory import MemoryStore
from tests.support.chat import ANA, BEN, GROUPS, MATHS, USERS, make_token

READ_S = 0.1
BURST = 4 * EVENTS_AT_ONCE_PER_USER


class SlowHistory(MemoryStore):
    """The seeded embedded store; a page of history takes ``READ_S`` and is counted while it runs."""

    def __init__(self) -> None:
        super().__init__()
        for user_id, full_name, last_name in USERS:
            self.add_user(user_id, full_name, last_name)
        for group_id, name, members in GROUPS:
            self.add_group(group_id, name, members)
        self.now = self.most = self.reads = 0

    async def search_messages(self, group_ids: Any, query: Any, **kwargs: Any) -> tuple[list[Message], bool]:
        await asyncio.sleep(READ_S)
        return await super().search_messages(group_ids, query, **kwargs)

    async def get_messages(self, group_id: str, **kwargs: Any) -> tuple[list[Message], bool]:
        self.reads += 1
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(READ_S)
            return await super().get_messages(group_id, **kwargs)
        finally:
            self.now -= 1


@pytest.fixture
def store() -> SlowHistory:
    return SlowHistory()


async def test_a_burst_from_one_user_runs_a_few_at_a_time_and_others_are_not_held(connect, store) -> None:
    ana, ben = await connect(ANA), await connect(BEN)
    loop = asyncio.get_running_loop()
    done_at: list[float] = []

    async def ana_reads(n: int) -> dict[str, Any]:
        answer = await ana.call("get_history", {"group_id": MATHS, "limit": 1 + n % 50})
        done_at.append(loop.time())
        return answer

    burst = asyncio.gather(*(ana_reads(n) for n in range(BURST)))
    await asyncio.sleep(READ_S / 2)
    asked = loop.time()
    bens = await ben.call("get_history", {"group_id": MATHS})
    ben_waited = loop.time() - asked
    answers = await burst
    assert all(a["ok"] for a in answers), [a for a in answers if not a["ok"]][:3]
    # Ana's burst ran EVENTS_AT_ONCE_PER_USER at a time (four rounds of reads), and Ben, who
    # asked while the first round ran, waited for his own read only.
    assert store.most <= EVENTS_AT_ONCE_PER_USER + 1, store.most
    assert max(done_at) - asked >= 2.5 * READ_S
    assert bens["ok"] is True and ben_waited < 2.5 * READ_S, ben_waited


async def test_a_token_refresh_does_not_wait_behind_the_users_burst(connect, store) -> None:
    ana = await connect(ANA)
    loop = asyncio.get_running_loop()
    burst = asyncio.gather(*(ana.call("get_history", {"group_id": MATHS}) for _ in range(BURST)))
    await asyncio.sleep(READ_S / 2)
    asked = loop.time()
    refreshed = await ana.call("refresh_token", {"token": make_token(ANA, ttl=7200)})
    assert refreshed["ok"] is True and loop.time() - asked < 2 * READ_S, loop.time() - asked
    assert all(a["ok"] for a in await burst)


async def test_events_left_waiting_by_a_closed_connection_are_not_handled(connect, store) -> None:
    ana = await connect(ANA)
    await asyncio.gather(*(ana.sio.emit("get_history", {"group_id": MATHS}, callback=lambda *a: None)
                           for _ in range(BURST)))
    await asyncio.sleep(READ_S * 1.5)  # into the second round of reads
    await ana.sio.disconnect()
    await asyncio.sleep(READ_S * 4)
    # The rounds under way finish; the events still waiting for a slot are dropped.
    assert store.reads <= 3 * EVENTS_AT_ONCE_PER_USER, store.reads


async def test_one_users_searches_hold_one_of_the_servers_few_search_slots(connect, store) -> None:
    """The server runs 4 searches at a time; one user's burst runs one at a time among them,
    so another user's search does not wait behind it."""
    ana, ben = await connect(ANA), await connect(BEN)
    loop = asyncio.get_running_loop()
    burst = asyncio.gather(*(ana.call("search_messages", {"query": f"notes {n}"}) for n in range(12)))
    await asyncio.sleep(READ_S / 2)
    asked = loop.time()
    bens = await ben.call("search_messages", {"query": "notes"})
    waited = loop.time() - asked
    assert bens["ok"] is True and waited < 2.5 * READ_S, waited
    assert all(a["ok"] for a in await burst)


async def test_a_slot_passes_to_the_first_waiting_event() -> None:
    slots = EventSlots(per_user=2)
    order: list[int] = []

    async def event(n: int, hold: asyncio.Event) -> None:
        await slots.take("u")
        order.append(n)
        await hold.wait()
        slots.give_back("u")

    holds = [asyncio.Event() for _ in range(5)]
    tasks = [asyncio.create_task(event(n, holds[n])) for n in range(5)]
    await asyncio.sleep(0)
    assert order == [0, 1] and slots.running("u") == 2
    tasks[2].cancel()  # gives up while waiting: its turn is skipped
    await asyncio.sleep(0)
    assert slots.take_now("u") is False  # a newcomer does not overtake those waiting
    holds[0].set()
    await asyncio.sleep(0.01)
    assert order == [0, 1, 3]
    for hold in holds:
        hold.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4] and slots.running("u") == 0


async def test_an_event_cancelled_as_its_slot_arrives_gives_the_slot_back() -> None:
    slots = EventSlots(per_user=1)
    assert slots.take_now("u")
    waiter = asyncio.create_task(slots.take("u"))
    await asyncio.sleep(0)
    slots.give_back("u")  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.running("u") == 0
    assert slots.take_now("u")
