"""Several real server processes sharing one Redis (or one Redis Cluster) and one MongoDB-wire server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.support.chat import ANA, BEN, CAROL, MATHS, NAMES, SECRET, ChatClient
from tests.support.mongo import seed_mongo
from tests.support.nodes import ROOT, Node, node_starter
from tests.support.redis import RedisProcess, queue_env

USERS = [(ANA, "Ana", "García"), (BEN, "Ben", "Okafor"), (CAROL, "Carol", "")]
GROUPS = [(MATHS, "Maths", [ANA, BEN, CAROL])]


@pytest.fixture
async def seeded_db(mongo_uri, mongo_db_name):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    return {"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET}


@pytest.fixture
def start_nodes(seeded_db, queue, node_factory):
    return node_starter({**seeded_db, **queue_env(queue), "PRESENCE_TTL_S": "3"}, node_factory)


def seqs(client: ChatClient) -> list[int]:
    return [m["seq"] for m in client.events("message")]


async def test_events_reach_members_on_every_node(start_nodes, clients):
    n1, n2, n3 = start_nodes(3)
    ana, ben, carol = await clients(n1, ANA), await clients(n2, BEN), await clients(n3, CAROL)
    await ana.call("join_group", {"group_id": MATHS})
    await ben.call("join_group", {"group_id": MATHS})
    # Presence crosses nodes, both ways.
    assert (await ana.wait_event("presence"))[0] == {"group_id": MATHS, "user_id": BEN, "name": NAMES[BEN],
                                                     "online": True}
    ack = await carol.call("join_group", {"group_id": MATHS})
    assert ack["online"] == sorted([ANA, BEN, CAROL])

    sent = await ana.call("send_message", {"group_id": MATHS, "content": "hola from node 1"})
    for c in (ana, ben, carol):
        assert (await c.wait_event("message"))[0] == sent["message"]

    await ben.call("typing", {"group_id": MATHS, "is_typing": True})
    assert (await carol.wait_event("typing"))[0]["user_id"] == BEN

    edited = await ana.call("edit_message", {"group_id": MATHS, "message_id": sent["message"]["id"],
                                             "content": "hola (edited)"})
    assert (await carol.wait_event("message_updated"))[0] == edited["message"]
    deleted = await ana.call("delete_message", {"group_id": MATHS, "message_id": sent["message"]["id"]})
    assert (await ben.wait_event("message_deleted"))[0] == deleted["message"]

    await carol.sio.disconnect()
    offline = await ana.wait_for(lambda: [p for p in ana.events("presence") if p["user_id"] == CAROL
                                          and not p["online"]])
    assert offline


async def test_concurrent_sends_on_three_nodes_keep_seq_exact_and_ordered(start_nodes, clients):
    nodes = start_nodes(3)
    senders = [await clients(node, user) for node, user in zip(nodes, (ANA, BEN, CAROL))]
    watchers = [await clients(node, user) for node, user in zip(nodes, (BEN, CAROL, ANA))]
    for c in senders + watchers:
        await c.call("join_group", {"group_id": MATHS})

    async def burst(client, n):
        return [await client.call("send_message", {"group_id": MATHS, "content": f"{client.user_id} {i}",
                                                   "client_msg_id": f"{client.user_id}-{i}"})
                for i in range(n)]

    results = await asyncio.gather(*[burst(c, 40) for c in senders])
    acked = sorted(a["message"]["seq"] for acks in results for a in acks)
    assert acked == list(range(1, 121))

    for watcher in watchers:
        await watcher.wait_for(lambda watcher=watcher: watcher.events("message") and seqs(watcher)[-1] == 120, timeout=20)
        got = seqs(watcher)
        assert got == sorted(set(got)), "a connection saw a group's seq go backwards or twice"
        # Whatever a queue fault skipped, history fills exactly.
        history = await watcher.call("get_history", {"group_id": MATHS, "after_seq": 0, "limit": 100})
        more = await watcher.call("get_history", {"group_id": MATHS, "after_seq": 100, "limit": 100})
        assert [m["seq"] for m in history["messages"] + more["messages"]] == list(range(1, 121))


async def test_killed_node_clients_reconnect_elsewhere_and_catch_up(start_nodes, clients):
    n1, n2 = start_nodes(2)
    ana, ben = await clients(n1, ANA), await clients(n2, BEN)
    await ana.call("join_group", {"group_id": MATHS})
    await ben.call("join_group", {"group_id": MATHS})
    acked = [await ben.call("send_message", {"group_id": MATHS, "content": f"before {i}"}) for i in range(5)]
    await ana.wait_event("message", 5)

    n1.kill()  # Ana's node dies
    # While Ana is away, Ben keeps sending on the surviving node.
    acked += [await ben.call("send_message", {"group_id": MATHS, "content": f"during {i}"}) for i in range(5)]
    # Ben's room hears that Ana is gone once her node's presence expires.
    await ben.wait_for(lambda: [p for p in ben.events("presence") if p["user_id"] == ANA and not p["online"]],
                       timeout=20)

    # The load balancer sends Ana to the surviving node; she catches up.
    last_held = seqs(ana)[-1]
    ana2 = await clients(n2, ANA)
    ack = await ana2.call("join_group", {"group_id": MATHS, "since_seq": last_held})
    caught_up = seqs(ana) + [m["seq"] for m in ack["messages"]]
    assert caught_up == [a["message"]["seq"] for a in acked] == list(range(1, 11))


async def test_unreachable_redis_at_start_names_redis_url(seeded_db, tmp_path):
    dead = RedisProcess()  # never started: nothing listens on its port
    env = {**seeded_db, "REDIS_URL": dead.url}
    node = Node(env, tmp_path, "no-redis")
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server"], cwd=ROOT, env=node.env,
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr


@pytest.mark.parametrize("queue", ["single"], indirect=True)
async def test_redis_outage_keeps_local_clients_served_and_recovers(start_nodes, clients, redis_server):
    n1, n2 = start_nodes(2)
    ana, ana_local_friend, ben = await clients(n1, ANA), await clients(n1, CAROL), await clients(n2, BEN)
    for c in (ana, ana_local_friend, ben):
        await c.call("join_group", {"group_id": MATHS})
    first = await ana.call("send_message", {"group_id": MATHS, "content": "before the outage"})
    await ben.wait_event("message")

    redis_server.stop()
    during = await ana.call("send_message", {"group_id": MATHS, "content": "during the outage"})
    assert during["ok"]
    # Local clients are still served...
    assert (await ana_local_friend.wait_event("message", 2))[1] == during["message"]
    # ...and the node says it is not ready, naming Redis.
    assert n1.status("/readyz") == 503

    redis_server.start()  # same port
    await asyncio.sleep(0)
    deadline = asyncio.get_running_loop().time() + 30
    while n1.status("/readyz") != 200 or n2.status("/readyz") != 200:
        assert asyncio.get_running_loop().time() < deadline, "nodes did not recover"
        await asyncio.sleep(0.2)

    # Fan-out works again; Ben's node fills what it missed from storage, in order.
    after = None
    for attempt in range(60):  # the queue subscription resumes with a short backoff
        after = await ana.call("send_message", {"group_id": MATHS, "content": f"after {attempt}"})
        try:
            await ben.wait_for(lambda after=after: any(m["id"] == after["message"]["id"] for m in ben.events("message")),
                               timeout=1)
            break
        except AssertionError:
            continue
    got = seqs(ben)
    assert got[0] == first["message"]["seq"] and got[-1] == after["message"]["seq"]
    assert got == list(range(got[0], got[-1] + 1))  # no gap for Ben to fill
    assert during["message"] in ben.events("message")


async def test_a_users_send_limit_is_shared_by_every_node(start_nodes, clients):
    """One bucket per user across nodes: a burst of 6 allows 6 sends in all,
    however they are spread over connections on two nodes and sent at once."""
    n1, n2 = start_nodes(2, RATE_LIMIT_SEND_PER_S="0.05", RATE_LIMIT_SEND_BURST="6")
    on_1, on_2 = await clients(n1, ANA), await clients(n2, ANA)
    for c in (on_1, on_2):
        await c.call("join_group", {"group_id": MATHS})

    acks = await asyncio.gather(*[
        c.call("send_message", {"group_id": MATHS, "content": f"try {i}"})
        for i in range(10) for c in (on_1, on_2)
    ])
    stored = [a for a in acks if a["ok"]]
    refused = [a for a in acks if not a["ok"]]
    assert len(stored) == 6
    assert {a["error"]["code"] for a in refused} == {"rate_limited"}
    assert all(a["error"]["retry_after_ms"] > 0 for a in refused)
    history = await on_2.call("get_history", {"group_id": MATHS})
    assert sorted(m["seq"] for m in history["messages"]) == list(range(1, 7))


async def test_a_fast_burst_on_one_node_reaches_the_other_node_whole(start_nodes, clients):
    """Publishes queued while earlier ones travel leave together, in order:
    a watcher on the other node sees every seq once, in order."""
    n1, n2 = start_nodes(2, RATE_LIMIT_SEND_PER_S="0")
    sender, watcher = await clients(n1, ANA), await clients(n2, BEN)
    for c in (sender, watcher):
        await c.call("join_group", {"group_id": MATHS})
    acks = await asyncio.gather(*[
        sender.call("send_message", {"group_id": MATHS, "content": f"burst {i}"}) for i in range(300)
    ])
    assert all(a["ok"] for a in acks)
    await watcher.wait_for(lambda: len(watcher.events("message")) >= 300, timeout=20)
    assert seqs(watcher) == list(range(1, 301))
