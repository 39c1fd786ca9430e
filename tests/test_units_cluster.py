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


async def test_rev_order_fills_every_gap_below_the_last_waiting_rev():
    """While one node's publishes are lost, its changes are missing between each
    of another node's: one fill reads them all, none is skipped."""
    got = _Delivered()
    asked: list[tuple[int, int]] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((after, before))
        return [(rev, _msg(rev)) for rev in range(after + 1, before)]

    order = RevOrder(got, wait_s=0.05, fill=fill)
    for rev in (10, 12, 14, 16):
        order.offer("g", rev, _msg(rev))
    await asyncio.sleep(0.2)
    assert asked == [(10, 16)]
    assert got == list(range(10, 17))
    order.close()


async def test_rev_order_keeps_a_rev_that_arrives_during_a_fill_waiting_for_its_own_gap():
    got = _Delivered()
    asked: list[tuple[int, int]] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((after, before))
        await asyncio.sleep(0.05)
        return [(rev, _msg(rev)) for rev in range(after + 1, before)]

    order = RevOrder(got, wait_s=0.05, fill=fill)
    order.offer("g", 10, _msg(10))
    order.offer("g", 12, _msg(12))
    await asyncio.sleep(0.07)  # the fill of 11 is reading
    order.offer("g", 14, _msg(14))  # 13 is missing too
    await asyncio.sleep(0.05)
    assert got == [10, 11, 12]  # 14 is not delivered over 13
    await asyncio.sleep(0.2)
    assert asked == [(10, 12), (12, 14)]
    assert got == [10, 11, 12, 13, 14]
    order.close()


async def test_rev_order_resync_reads_every_change_after_the_last_delivered_page_by_page():
    got = _Delivered()
    asked: list[int] = []
    stored = list(range(1, 251))

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append(after)
        await asyncio.sleep(0.01)
        return [(rev, _msg(rev)) for rev in stored if after < rev < before][:100]

    order = RevOrder(got, wait_s=5.0, fill=fill)
    order.offer("g", 1, _msg(1))
    resync = asyncio.ensure_future(order.resync("g"))
    await asyncio.sleep(0)
    order.offer("g", 251, _msg(251))  # live, while the resync reads: waits behind it
    await resync
    assert asked == [1, 101, 201, 251]  # the live 251 went out right after 250
    assert got == list(range(1, 252))
    await order.resync("unknown")  # nothing delivered there yet: nothing to catch up
    order.close()


async def test_rev_order_fills_a_change_lost_before_its_first_delivery_from_the_joins_baseline():
    """A node that joined a group at rev 20 and whose first broadcast is 22 (21 was
    lost on the queue) fills 21 from storage; without the baseline 22 would
    have started the order and 21 gone unseen."""
    got = _Delivered()
    asked: list[tuple[int, int]] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((after, before))
        return [(21, _msg(21))]

    order = RevOrder(got, wait_s=0.02, fill=fill)
    order.baseline("g", 20)
    order.offer("g", 22, _msg(22))
    await asyncio.sleep(0.1)
    assert asked == [(20, 22)]
    assert got == [21, 22]
    order.baseline("g", 40)  # a later join changes nothing once the order started
    order.offer("g", 23, _msg(23))
    assert got == [21, 22, 23]
    order.close()


async def test_rev_order_forgets_a_group_it_stopped_listening_to():
    got = _Delivered()
    order = RevOrder(got, wait_s=5.0)
    order.offer("g", 1, _msg(1))
    order.offer("g", 3, _msg(3))
    order.forget("g")  # what waited goes out
    assert got == [1, 3]
    order.offer("g", 40, _msg(40))  # listening again later starts afresh, without a wait
    assert got == [1, 3, 40]
    order.close()


def test_every_key_and_channel_of_a_group_shares_one_hash_slot():
    from redis.crc import key_slot

    from cluster.presence import _group_key
    from cluster.redis_manager import group_channel

    group = "65b0000000000000000000a1"
    user_key, group_key = RedisPresence._keys(group, "65a000000000000000000001")
    slots = {key_slot(k.encode()) for k in (group_channel(group), _group_key(group), user_key, group_key)}
    assert len(slots) == 1


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


async def test_rev_order_resync_tries_again_when_storage_cannot_be_read(monkeypatch):
    """A resync has no later broadcast to reveal what it missed: a failed read is
    tried again (it used to give up at once, and the change was never delivered)."""
    monkeypatch.setattr("cluster.rev_order.RESYNC_PAUSES_S", (0.05, 0.05))
    got = _Delivered()
    tries: list[int] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        tries.append(after)
        if len(tries) < 3:
            raise ConnectionError("storage is slow")
        return [(rev, _msg(rev)) for rev in (2, 3) if after < rev < before]

    order = RevOrder(got, wait_s=5.0, fill=fill)
    order.offer("g", 1, _msg(1))
    await order.resync("g")
    assert got == [1, 2, 3]
    assert tries[:3] == [1, 1, 1]
    order.close()


async def test_rev_order_resync_asked_during_a_gap_fill_runs_after_it():
    got = _Delivered()
    asked: list[tuple[int, int]] = []
    stored = [1, 2, 3, 4, 5]

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((after, before))
        await asyncio.sleep(0.05)
        return [(rev, _msg(rev)) for rev in stored if after < rev < before]

    order = RevOrder(got, wait_s=0.01, fill=fill)
    order.offer("g", 1, _msg(1))
    order.offer("g", 3, _msg(3))  # 2 is missing: a gap fill starts after the wait
    await asyncio.sleep(0.03)
    await order.resync("g")  # the channel came back meanwhile; 4 and 5 were sent then
    for _ in range(50):
        if got == stored:
            break
        await asyncio.sleep(0.01)
    assert got == stored
    assert asked[:2] == [(1, 3), (3, 2**62)]  # the resync, once the fill is done
    order.close()


async def test_rev_order_resync_before_the_first_join_reads_from_its_baseline():
    """The channel of a group was confirmed only after a join had read storage (Redis
    was down during the join): the catch-up starts where that join's page ended."""
    got = _Delivered()
    asked: list[int] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append(after)
        return [(rev, _msg(rev)) for rev in (11, 12) if after < rev < before]

    order = RevOrder(got, wait_s=5.0, fill=fill)
    await order.resync("g")  # confirmed before the join's baseline is known
    assert got == [] and asked == []
    order.baseline("g", 10)
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [11, 12] and asked[0] == 10
    order.close()


async def test_rev_order_keeps_an_idle_groups_last_rev():
    """A group quiet for ``idle_s`` is set aside, its last rev kept: a change lost right
    after the quiet spell is still a gap to fill, and a resync starts from it."""
    got = _Delivered()
    asked: list[tuple[int, int]] = []

    async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
        asked.append((after, before))
        return [(rev, _msg(rev)) for rev in range(1, 10) if after < rev < before]

    order = RevOrder(got, wait_s=0.01, idle_s=0.05, fill=fill)
    order.offer("g", 1, _msg(1))
    order.offer("quiet", 1, _msg(1))
    await asyncio.sleep(0.1)
    order.offer("other", 1, _msg(1))  # the table is pruned here: "g" and "quiet" are idle
    assert len(order) == 1
    order.offer("g", 3, _msg(3))  # 2 was lost on the queue
    await asyncio.sleep(0.1)
    assert asked == [(1, 3)]
    got.clear()
    await order.resync("quiet")  # its channel came back after a quiet spell
    assert got == list(range(2, 10))
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
