"""A channel per group on Redis (and shard channels on a Redis Cluster): real
server processes, real Redis, real clients.

- A node receives a group's broadcasts only while one of its connections is in
  the group (and for ``REDIS_CHANNEL_LINGER_S`` after), not every broadcast of
  the deployment.
- On a Redis Cluster, or behind Redis Sentinel, killing the master that holds a
  group's channel during a burst loses no acked message and doubles none, for
  members on every node.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from cluster.redis_manager import group_channel
from tests.support.chat import ANA, BEN, CAROL, DAN, MATHS, PHYSICS, SECRET, ChatClient
from tests.support.mongo import seed_mongo
from tests.support.nodes import Node, metric, node_starter
from tests.support.redis import queue_env

USERS = [(ANA, "Ana", "García"), (BEN, "Ben", "Okafor"), (CAROL, "Carol", ""), (DAN, "Dan", "Wu")]
GROUPS = [(MATHS, "Maths", [ANA, BEN, CAROL, DAN]), (PHYSICS, "Physics", [CAROL, DAN])]


@pytest.fixture
async def seeded_db(mongo_uri, mongo_db_name):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    return {"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET}


@pytest.fixture
def start_nodes(seeded_db, queue, node_factory):
    env = {**seeded_db, **queue_env(queue), "PRESENCE_TTL_S": "3", "RATE_LIMIT_SEND_PER_S": "0"}
    return node_starter(env, node_factory)


async def quiet_metric(node: Node, name: str, *, still_s: float = 0.5, timeout: float = 10) -> float:
    """``metric`` once it has not moved for ``still_s``: what the node still had on its way
    (its own presence news, read back from a channel it listens to) has arrived."""
    value, deadline = metric(node, name), asyncio.get_running_loop().time() + timeout
    while True:
        await asyncio.sleep(still_s)
        now = metric(node, name)
        if now == value or asyncio.get_running_loop().time() > deadline:
            return now
        value = now


async def joined(client: ChatClient, group_id: str) -> dict:
    ack = await client.call("join_group", {"group_id": group_id})
    assert ack["ok"], ack
    return ack


@pytest.mark.parametrize("channels", ["group", "single"])
async def test_a_node_receives_only_the_broadcasts_of_groups_it_serves(start_nodes, clients, channels):
    n1, n2, n3 = start_nodes(3, REDIS_CHANNELS=channels)
    ana, ben, carol = await clients(n1, ANA), await clients(n2, BEN), await clients(n3, CAROL)
    await joined(ana, MATHS)
    await joined(ben, MATHS)
    await joined(carol, PHYSICS)  # Carol's node serves no one in Maths
    # Carol's presence in Physics comes back to her node through Redis, later on a Cluster.
    before = [await quiet_metric(n, "chat_redis_received_messages") for n in (n1, n2, n3)]
    for i in range(50):
        await ana.call("send_message", {"group_id": MATHS, "content": f"maths {i}"})
    await ben.wait_for(lambda: len(ben.events("message")) >= 50, timeout=20)
    await carol.settle()
    received = [metric(n, "chat_redis_received_messages") - b for n, b in zip((n1, n2, n3), before)]
    assert received[1] >= 50  # Ben's node hears Maths
    if channels == "group":
        assert received[2] == 0, "a node with no one in Maths received Maths' broadcasts"
        assert metric(n3, "chat_redis_group_channels") == 1  # Physics only
    else:  # one channel, as before: every node hears everything
        assert received[2] >= 50
    assert not carol.events("message")


async def _subscribers(queue, channel: str) -> int:
    """How many connections listen to ``channel`` (a classic channel on one redis-server)."""
    probe = aioredis.Redis.from_url(queue.url)
    try:
        return int((await probe.pubsub_numsub(channel))[0][1])
    finally:
        await probe.aclose()


@pytest.mark.parametrize("queue", ["single"], indirect=True)
async def test_a_group_channel_lingers_after_the_last_member_leaves(start_nodes, clients, queue):
    n1, n2 = start_nodes(2, REDIS_CHANNEL_LINGER_S="1.5")
    channel = group_channel(MATHS)
    ana, ben = await clients(n1, ANA), await clients(n2, BEN)
    await joined(ana, MATHS)
    await joined(ben, MATHS)
    assert await _subscribers(queue, channel) == 2  # the join waited for it

    # A member flapping (leave, join again within the linger) keeps the subscription.
    await ana.call("leave_group", {"group_id": MATHS})
    await asyncio.sleep(0.5)
    await joined(ana, MATHS)
    await asyncio.sleep(1.5)  # past the first leave's linger
    assert await _subscribers(queue, channel) == 2
    assert metric(n1, "chat_redis_group_channels") == 1

    # The last connection goes (a disconnect, not a leave): the node stops listening after the linger.
    await ana.sio.disconnect()
    await asyncio.sleep(0.5)
    assert await _subscribers(queue, channel) == 2
    deadline = asyncio.get_running_loop().time() + 5
    while await _subscribers(queue, channel) != 1:
        assert asyncio.get_running_loop().time() < deadline, "the node kept listening to a group it no longer serves"
        await asyncio.sleep(0.1)
    assert metric(n1, "chat_redis_group_channels") == 0

    # Back again: the node listens again and delivers at once, in order.
    ana2 = await clients(n1, ANA)
    await joined(ana2, MATHS)
    sent = [await ben.call("send_message", {"group_id": MATHS, "content": f"again {i}"}) for i in range(3)]
    got = await ana2.wait_event("message", 3, timeout=3)
    assert [m["seq"] for m in got] == [s["message"]["seq"] for s in sent]


@pytest.mark.parametrize("queue", ["cluster", "sentinel"], indirect=True)
async def test_killing_the_master_of_a_groups_channel_during_a_burst_loses_and_doubles_nothing(
        start_nodes, clients, queue):
    nodes = start_nodes(3)
    members = [await clients(node, user) for node, user in zip(nodes, (ANA, BEN, CAROL))]
    watcher = await clients(nodes[2], DAN)  # a second member on the third node
    for member in [*members, watcher]:
        await joined(member, MATHS)
    master = queue.master_of(group_channel(MATHS))
    senders = members[:2]
    acked: list[dict] = []

    async def burst(client: ChatClient, count: int) -> None:
        for i in range(count):
            ack = await client.call("send_message", {"group_id": MATHS, "content": f"{client.user_id} {i}",
                                                     "client_msg_id": f"{client.user_id}-{i}"}, timeout=30)
            assert ack["ok"], ack
            acked.append(ack["message"])
            await asyncio.sleep(0.01)

    sending = asyncio.gather(*[burst(sender, 150) for sender in senders])
    while len(acked) < 60:
        await asyncio.sleep(0.02)
    master.stop()  # SIGKILL; its replica takes over after the cluster's node timeout (or the sentinel's)
    await sending
    assert sorted(m["seq"] for m in acked) == list(range(1, 301))
    assert master not in queue.live()

    for member in [*members, watcher]:
        try:
            await member.wait_for(lambda member=member: len(member.events("message")) >= 300, timeout=30)
        except AssertionError:
            pass
        got = [m["seq"] for m in member.events("message")]
        missing = sorted(set(range(1, 301)) - set(got))
        assert got == list(range(1, 301)), f"{member.user_id}: {len(missing)} lost ({missing[:10]}...), " \
                                           f"{len(got) - len(set(got))} doubled"
    # Every node listened again on the new master and read what it missed from storage.
    assert all(metric(node, "chat_redis_resubscribed_channels") >= 1 for node in nodes)


@pytest.mark.parametrize("queue", ["single"], indirect=True)
async def test_a_join_during_a_redis_outage_is_answered_and_gets_what_was_sent_meanwhile(start_nodes, clients, queue):
    n1, n2 = start_nodes(2)
    dan, carol = await clients(n1, DAN), await clients(n2, CAROL)
    await joined(dan, PHYSICS)
    await carol.settle()
    queue.stop()
    started = asyncio.get_running_loop().time()
    await joined(carol, PHYSICS)  # n2 has never listened to Physics; Redis is down
    assert asyncio.get_running_loop().time() - started < 3
    during = await dan.call("send_message", {"group_id": PHYSICS, "content": "sent while Redis is down"})
    assert during["ok"]
    queue.start()
    # n2 subscribes again and reads what it missed from storage, from where Carol's join left off.
    got = await carol.wait_event("message", timeout=30)
    assert got[0]["id"] == during["message"]["id"]
    after = await dan.call("send_message", {"group_id": PHYSICS, "content": "and after"})
    await carol.wait_for(lambda: len(carol.events("message")) >= 2, timeout=10)
    assert [m["seq"] for m in carol.events("message")] == [during["message"]["seq"], after["message"]["seq"]]
