"""Unit tests of cluster coordination's parts: the reorder buffer, presence on a real
Redis (through the one script path, with its fallback), and the filter of the node's own publishes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from cluster.presence import RedisPresence
from cluster.redis_manager import OrderedRedisManager
from cluster.redis_scripts import RedisConnection
from cluster.rev_order import RevOrder
from realtime.codec import SafeJSON
from tests.support.redis import RedisProcess

# -- RevOrder --


def _msg(rev: int) -> dict[str, Any]:
    return {"rev": rev}


class _Delivered(list):
    def __call__(self, message: dict[str, Any]) -> None:
        self.append(message["rev"])


async def test_rev_order_delivers_in_order_and_holds_a_gap_until_it_fills():
    got = _Delivered()
    order = RevOrder(got, wait_s=5.0)
    order.offer("g", 1, _msg(1))
    order.offer("g", 3, _msg(3))
    order.offer("g", 4, _msg(4))
    assert got == [1]  # 3 and 4 wait for 2
    order.offer("g", 2, _msg(2))
    assert got == [1, 2, 3, 4]
    order.offer("g", 3, _msg(3))  # repeated
    order.offer("g", 1, _msg(1))  # late
    order.offer("other", 7, _msg(7))  # each group on its own; its first rev starts it
    assert got == [1, 2, 3, 4, 7]
    order.close()


async def test_rev_order_gives_up_on_a_missing_rev_after_its_wait():
    got = _Delivered()
    order = RevOrder(got, wait_s=0.05)
    order.offer("g", 10, _msg(10))
    order.offer("g", 12, _msg(12))
    order.offer("g", 14, _msg(14))
    assert got == [10]
    await asyncio.sleep(0.3)
    assert got == [10, 12, 14]  # a rev jump the clients fill with get_changes
    order.offer("g", 11, _msg(11))  # too late: never backwards
    order.offer("g", 13, _msg(13))
    order.offer("g", 15, _msg(15))
    assert got == [10, 12, 14, 15]
    order.close()


async def test_rev_order_fills_a_missing_rev_from_storage_before_going_on():
    got = _Delivered()
    asked: list[tuple[str, int, int]] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((group_id, after, before))
        await asyncio.sleep(0.05)
        return [(11, _msg(11)), (13, _msg(13))]  # 12 changed again later: not there any more

    order = RevOrder(got, wait_s=0.05, fill=fill)
    order.offer("g", 10, _msg(10))
    order.offer("g", 14, _msg(14))
    await asyncio.sleep(0.08)
    order.offer("g", 15, _msg(15))  # arrives while the fill reads: waits behind it
    assert got == [10]
    await asyncio.sleep(0.1)
    assert asked == [("g", 10, 14)]
    assert got == [10, 11, 13, 14, 15]
    order.offer("g", 16, _msg(16))
    assert got[-1] == 16
    order.close()


async def test_rev_order_goes_on_when_the_fill_fails():
    got = _Delivered()

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        raise ConnectionError("storage is down")

    order = RevOrder(got, wait_s=0.02, fill=fill)
    order.offer("g", 1, _msg(1))
    order.offer("g", 3, _msg(3))
    await asyncio.sleep(0.1)
    assert got == [1, 3]  # clients fill the jump themselves
    order.close()


async def test_rev_order_forgets_idle_groups_but_not_waiting_ones():
    """The per-group table used to keep every group ever seen."""
    got = _Delivered()
    # idle_s well above what 1,000 offers take on a loaded machine: no prune in between.
    order = RevOrder(got, wait_s=10.0, idle_s=0.5)
    for i in range(1000):
        order.offer(f"g{i}", 1, _msg(1))
    order.offer("waiting", 1, _msg(1))
    order.offer("waiting", 3, _msg(3))  # holds 3 until 2 comes
    assert len(order) == 1001
    await asyncio.sleep(0.6)
    order.offer("busy", 1, _msg(1))
    assert len(order) == 2  # "waiting" and "busy"
    order.offer("waiting", 2, _msg(2))
    assert got[-2:] == [2, 3]
    order.close()


async def test_rev_order_close_cancels_its_timers():
    got = _Delivered()
    order = RevOrder(got, wait_s=0.05)
    order.offer("g", 1, _msg(1))
    order.offer("g", 3, _msg(3))
    order.close()
    await asyncio.sleep(0.2)
    assert got == [1] and len(order) == 0


# -- RedisPresence on a real Redis --


@pytest.fixture
async def connection(redis_server: RedisProcess):
    conn = RedisConnection(redis_server.url)
    await conn.open()
    yield conn
    await conn.close()


async def test_presence_counts_users_across_nodes(connection):
    one, two = RedisPresence(connection, "node1"), RedisPresence(connection, "node2")
    assert await one.join("g", "ana", "s1") is True
    assert await two.join("g", "ana", "s2") is False  # already online through node1
    assert await two.join("g", "ben", "s3") is True
    assert await one.online("g") == ["ana", "ben"]
    assert await one.leave("g", "ana", "s1") is False  # still on node2
    assert await two.leave("g", "ana", "s2") is True
    assert await two.online("g") == ["ben"]
    # Calls made together go out together, each with its own answer.
    answers = await asyncio.gather(*[one.join("h", f"u{i}", f"s{i}") for i in range(50)])
    assert answers == [True] * 50 and len(await two.online("h")) == 50


async def test_presence_falls_back_to_its_own_view_and_survives_a_restart(connection, redis_server, caplog):
    caplog.set_level(logging.ERROR, "cluster.presence")
    presence = RedisPresence(connection, "node1")
    await presence.join("g", "ana", "s1")
    redis_server.stop()
    assert await presence.join("g", "ben", "s2") is True  # this node's view
    assert await presence.online("g") == ["ana", "ben"]
    assert await presence.leave("g", "ana", "s1") is True
    redis_server.start()  # empty: no keys, no scripts loaded
    for _ in range(50):
        try:
            await presence.heartbeat()  # writes this node's view back
            break
        except (OSError, aioredis.RedisError):
            await asyncio.sleep(0.1)
    assert await presence.online("g") == ["ben"]
    assert await presence.join("g", "carol", "s3") is True  # the scripts are loaded again
    assert await presence.online("g") == ["ben", "carol"]


# -- the filter of the node's own publishes --


async def test_the_listener_skips_only_this_nodes_own_publishes():
    manager = OrderedRedisManager("redis://127.0.0.1:1/0", json=SafeJSON)
    other_host = "f" * 32
    own = {"method": "emit", "event": "x", "data": [1], "host_id": manager.host_id}
    # Another node's message that merely mentions this node's id must pass.
    mentions = {"method": "emit", "event": "x", "data": [manager.host_id], "host_id": other_host}
    theirs = {"method": "emit", "event": "x", "data": [2], "host_id": other_host}
    handled: list[Any] = []

    async def handle(message: dict[str, Any]) -> None:
        handled.append(message)

    manager._handle_emit = handle  # type: ignore[method-assign]
    for message in (own, mentions, own, theirs):
        await manager._take(SafeJSON.dumpb(message))
    assert handled == [mentions, theirs]
    assert manager.received == 4
