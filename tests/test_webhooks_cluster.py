"""Webhooks from server processes on one MongoDB (and Redis): each event
delivered once by one node, and delivered still when a node dies mid-request."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.support.chat import ANA, BEN, CAROL, MATHS, SECRET
from tests.support.mongo import seed_mongo
from tests.support.webhooks import WEBHOOK_SECRET, Receiver, receiver

USERS = [(ANA, "Ana", "García"), (BEN, "Ben", "Okafor"), (CAROL, "Carol", "")]
GROUPS = [(MATHS, "Maths", [ANA, BEN, CAROL])]
TIMEOUT_S = 2  # WEBHOOK_TIMEOUT_S: a lease is this plus 5 s


@pytest.fixture
async def env(mongo_uri, mongo_db_name, redis_server, receiver):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    return {"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET,
            "REDIS_URL": redis_server.url, "PRESENCE_TTL_S": "3",
            "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_TIMEOUT_S": str(TIMEOUT_S)}


async def events_total(node, outcome: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as resp:
        text = await resp.text()
    found = re.search(rf'^chat_webhook_events_total{{outcome="{outcome}"}} (\S+)$', text, flags=re.M)
    assert found, text
    return float(found.group(1))


async def mention(client, content, mentions):
    ack = await client.call("send_message", {"group_id": MATHS, "content": content, "mentions": mentions})
    assert ack["ok"], ack
    return ack["message"]


async def test_two_nodes_deliver_every_event_once(env, node_factory, clients, receiver):
    n1, n2 = node_factory(env, "node1"), node_factory(env, "node2")
    ana, carol = await clients(n1, ANA), await clients(n2, CAROL)
    for c in (ana, carol):
        assert (await c.call("join_group", {"group_id": MATHS}))["ok"]
    # Ben is not connected; Ana and Carol are in the room (on different nodes).
    # Half the events fail once, so both nodes race for their retries.
    expected: dict[str, int] = {}
    for i in range(20):
        for sender, other in ((ana, CAROL), (carol, ANA)):
            content = f"plan:500,200 #{i}" if i % 2 else f"#{i}"
            message = await mention(sender, content, [BEN, other])
            expected[f"mention_{message['id']}_{BEN}"] = 2 if i % 2 else 1

    def all_delivered():
        got = receiver.by_id()
        return set(got) == set(expected) and all(got[i][-1].status == 200 for i in expected)

    await receiver.wait_for(all_delivered, timeout=40)
    got = receiver.by_id()
    for event_id, attempts in expected.items():
        assert [d.status for d in got[event_id]] == [500] * (attempts - 1) + [200], event_id
        assert {d.payload()["data"]["user_id"] for d in got[event_id]} == {BEN}
    # Each outcome was recorded by one node: the counts add up exactly.
    # (A node counts an outcome just after the receiver has answered: give it a moment.)
    for outcome, count in (("delivered", 40), ("retried", 20), ("failed", 0)):
        for _ in range(50):
            total = sum([await events_total(n, outcome) for n in (n1, n2)])
            if total >= count:
                break
            await asyncio.sleep(0.1)
        assert total == count, outcome

    # Presence across nodes: Ben in the room on node 2 gets no webhook for a
    # mention on node 1; Carol, once her last connection left, does.
    ben = await clients(n2, BEN)
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    seen = len(receiver.deliveries)
    here = await mention(ana, "@ben you are here", [BEN])
    assert (await ben.wait_event("message"))[-1] == here
    await carol.sio.disconnect()
    await ana.wait_for(lambda: [p for p in ana.events("presence") if p["user_id"] == CAROL and not p["online"]])
    gone = await mention(ana, "@carol gone", [BEN, CAROL])
    (posted,) = await receiver.wait_for(lambda: receiver.deliveries[seen:])
    assert posted.id == f"mention_{gone['id']}_{CAROL}"
    await asyncio.sleep(0.5)
    assert len(receiver.deliveries) == seen + 1


async def kill_mid_delivery(env, node_factory, clients, receiver):
    """Node 1 sends a mention whose delivery the receiver holds open, and dies
    while it is held (SIGKILL): the event's lease is left behind."""
    node = node_factory(env, "node1")
    ana = await clients(node, ANA)
    message = await mention(ana, "plan:hold,200", [BEN])
    (held,) = await receiver.wait_for(lambda: receiver.deliveries)
    node.kill()
    receiver.release()
    return node, message, held


async def test_an_event_held_by_a_killed_node_is_sent_by_another(env, node_factory, clients, receiver):
    _, message, held = await kill_mid_delivery(env, node_factory, clients, receiver)
    node_factory(env, "node2")
    (_, again) = await receiver.wait_for(lambda: len(receiver.deliveries) == 2 and receiver.deliveries, timeout=20)
    assert again.id == held.id == f"mention_{message['id']}_{BEN}"
    assert again.payload() == held.payload()
    await receiver.wait_for(lambda: again.status == 200)


async def test_an_event_held_by_a_killed_node_is_sent_after_its_restart(env, node_factory, clients, receiver):
    node, message, held = await kill_mid_delivery(env, node_factory, clients, receiver)
    node.start()
    (_, again) = await receiver.wait_for(lambda: len(receiver.deliveries) == 2 and receiver.deliveries, timeout=20)
    assert again.id == held.id and again.payload()["data"]["message"] == message
    await receiver.wait_for(lambda: again.status == 200)
