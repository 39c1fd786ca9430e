"""Presence stays exact when sockets drop, or leave, while their events are still running.

The store here is the embedded one with a database's latency on every read, so a
socket closed a few milliseconds after its ``join_group`` was sent closes while
the join is reading: the case where cleanup used to run before the join recorded
the connection, leaving its user ``online`` for good.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from cluster.rate_limits import Bucket, RateLimits
from storage.base import GroupAccess, Message, ReadState
from storage.memory import MemoryStore
from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    GROUPS,
    MATHS,
    PHYSICS,
    USERS,
    ChatClient,
    make_settings,
    make_token,
)
from tests.support.raw import RawSocket

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial


class SlowStore(MemoryStore):
    """The embedded store, answering reads after ``delay`` seconds like a database would."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        for user_id, full_name, last_name in USERS:
            self.add_user(user_id, full_name, last_name)
        for group_id, name, members in GROUPS:
            self.add_group(group_id, name, members)

    async def _wait(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    async def get_group(self, group_id: str, user_id: str) -> GroupAccess | None:
        await self._wait()
        return await super().get_group(group_id, user_id)

    async def get_group_for(self, group_id: str, user_ids: Collection[str]) -> dict[str, GroupAccess] | None:
        await self._wait()
        return await super().get_group_for(group_id, user_ids)

    async def get_messages(self, group_id: str, **kwargs: Any) -> tuple[list[Message], bool]:
        await self._wait()
        return await super().get_messages(group_id, **kwargs)

    async def read_state(self, group_id: str, user_id: str, **tops: int | None) -> ReadState:
        await self._wait()
        return await super().read_state(group_id, user_id, **tops)


READ_DELAY = 0.02


@pytest.fixture
def store() -> SlowStore:
    return SlowStore(READ_DELAY)


@pytest.fixture
def settings():
    """Rate limits off: the fuzz test's checks alone make hundreds of calls."""
    return make_settings(rate_limits=RateLimits(send=Bucket(0, 1), other=Bucket(0, 1)))


async def metric(server_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server_url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def settled_online(observer: ChatClient, group_id: str, expected: list[str], timeout: float = 10) -> list[str]:
    """``online`` as the observer's join answers it, once it equals ``expected`` or
    ``timeout`` passed (disconnects are handled a moment after the socket closes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ack = await observer.call("join_group", {"group_id": group_id})
        assert ack["ok"], ack
        if sorted(ack["online"]) == sorted(expected) or loop.time() > deadline:
            return sorted(ack["online"])
        await asyncio.sleep(0.05)


async def test_a_socket_dropped_during_join_leaves_nobody_online(server_url, connect):
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    async with aiohttp.ClientSession() as http:
        for attempt in range(20):
            ana = await RawSocket.open(http, server_url, make_token(ANA))
            await ana.ws.send_str("42" + str(attempt) + json.dumps(["join_group", {"group_id": MATHS}]))
            # From before the first read to after the last one.
            await asyncio.sleep(READ_DELAY * (attempt % 5) * 0.8)
            await ana.ws.close()
    assert await settled_online(ben, MATHS, [BEN]) == [BEN]
    # Whatever Ben was told about Ana, the last word is that she is offline.
    about_ana = [p["online"] for p in ben.events("presence") if p["user_id"] == ANA]
    assert not about_ana or about_ana[-1] is False, about_ana
    assert await metric(server_url, "chat_connected_clients") == 1
    assert await metric(server_url, "chat_joined_rooms") == 1


async def test_a_leave_sent_while_the_join_reads_wins(server_url, connect, store):
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    ana = await connect(ANA)
    store.delay = 0.2  # the join: membership 0-0.2 s, then in the room, reading messages 0.2-0.4 s
    join = asyncio.ensure_future(ana.call("join_group", {"group_id": MATHS}))
    await asyncio.sleep(0.3)
    assert (await ana.call("leave_group", {"group_id": MATHS}))["ok"] is True
    assert (await join)["ok"] is True
    store.delay = 0
    assert await settled_online(ben, MATHS, [BEN]) == [BEN]
    sent = await ben.call("send_message", {"group_id": MATHS, "content": "only Ben is here"})
    await ana.settle()
    assert sent["ok"] and ana.events("message") == []


# -- the fuzz test: random clients, random events, sockets dropped at random points --

EVENTS = st.sampled_from([
    ("join_group", MATHS), ("join_group", PHYSICS), ("leave_group", MATHS), ("leave_group", PHYSICS),
    ("send_message", MATHS), ("list_groups", None), ("join_group", MATHS),
])


@dataclass
class Plan:
    user_id: str
    events: list[tuple[str, str | None]]
    drop_after_ms: int | None  # None: stays connected


PLANS = st.builds(
    Plan,
    user_id=st.sampled_from([ANA, BEN]),
    events=st.lists(EVENTS, min_size=1, max_size=4),
    drop_after_ms=st.one_of(st.none(), st.integers(0, 80)),
)

FUZZ = hypothesis.settings(
    max_examples=60, deadline=None, database=None, derandomize=True, print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def _payload(event: str, group_id: str | None, n: int) -> dict[str, Any]:
    if event == "send_message":
        return {"group_id": group_id, "content": f"fuzz {n}"}
    return {} if group_id is None else {"group_id": group_id}


async def test_presence_is_exact_whenever_sockets_drop(server, server_url, connect, store):
    """Ana and Ben open sockets, fire events without waiting, and some sockets drop
    after a random delay. Carol then checks each group: a message she sends reaches
    exactly the sockets left in its room, and ``online`` names exactly their users."""
    carol = await connect(CAROL)
    counter = itertools.count(1)
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    examples = itertools.count()

    async def run_example(plans: list[Plan], delay_ms: int) -> None:
        next(examples)
        store.delay = delay_ms / 1000
        async with aiohttp.ClientSession() as http:
            sockets = [await RawSocket.open(http, server_url, make_token(p.user_id)) for p in plans]

            async def drive(plan: Plan, raw: RawSocket) -> None:
                ids = []
                for event, group_id in plan.events:
                    n = next(counter)
                    ids.append(n)
                    await raw.ws.send_str(f"42{n}" + json.dumps([event, _payload(event, group_id, n)]))
                if plan.drop_after_ms is not None:
                    await asyncio.sleep(plan.drop_after_ms / 1000)
                    await raw.ws.close()
                else:
                    for n in ids:
                        assert await raw.ack(n) is not None, f"no ack {n}: {raw.replies}"

            await asyncio.gather(*(drive(p, r) for p, r in zip(plans, sockets)))
            stayers = [(p, r) for p, r in zip(plans, sockets) if p.drop_after_ms is None]
            store.delay = 0
            for group_id in (MATHS, PHYSICS):
                # Who is in the room: whoever receives what Carol sends now.
                sent = await carol.call("send_message", {"group_id": group_id, "content": f"probe {next(counter)}"})
                marker = f'"id":"{sent["message"]["id"]}"'
                probe = next(counter)
                in_room = set()
                for plan, raw in stayers:
                    await raw.ws.send_str(f"42{probe}" + json.dumps(["list_groups", {}]))
                    assert await raw.ack(probe) is not None
                    if any(marker in reply.replace(" ", "") for reply in raw.replies):
                        in_room.add(plan.user_id)
                expected = sorted(in_room | {CAROL})
                online = await settled_online(carol, group_id, expected, timeout=5)
                if online != expected:
                    problems.append(f"{group_id}: online {online}, in the room {expected}; plans {plans}")
            for _, raw in stayers:
                await raw.ws.close()
        # Every socket closed: nobody but Carol is left anywhere.
        for group_id in (MATHS, PHYSICS):
            online = await settled_online(carol, group_id, [CAROL], timeout=5)
            if online != [CAROL]:
                problems.append(f"after all closed, {group_id}: online {online}; plans {plans}")

    @FUZZ
    @given(plans=st.lists(PLANS, min_size=1, max_size=4), delay_ms=st.integers(0, 30))
    def explore(plans: list[Plan], delay_ms: int) -> None:
        if not problems:
            asyncio.run_coroutine_threadsafe(run_example(plans, delay_ms), loop).result(timeout=40)

    started = loop.time()
    await asyncio.to_thread(explore)
    assert not problems, problems[:3]
    assert next(examples) >= 20
    assert await metric(server_url, "chat_connected_clients") == 1
    assert loop.time() - started < 45


# -- a socket that drops during its handshake --

class SlowUsers(SlowStore):
    """Reading the user's name (during the handshake) takes ``delay`` seconds."""

    async def get_user(self, user_id: str) -> Any:
        await self._wait()
        return await super().get_user(user_id)


class TestDropDuringHandshake:
    @pytest.fixture
    def store(self) -> SlowUsers:
        return SlowUsers(0.2)

    @pytest.fixture
    def settings(self):
        return make_settings(max_connections_per_user=3)

    async def test_the_connection_is_not_kept_and_its_slot_is_freed(self, server_url, connect, store):
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                ws = await http.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
                assert (await ws.receive_str(timeout=10)).startswith("0{")
                await ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
                await asyncio.sleep(0.05)  # the server is reading Ana's name
                await ws.close()
        await asyncio.sleep(0.4)
        store.delay = 0
        ana = await connect(ANA)  # refused as too_many_connections if the dropped ones were kept
        assert (await ana.call("list_groups"))["ok"] is True
        assert await metric(server_url, "chat_connected_clients") == 1
