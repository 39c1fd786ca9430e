"""Revisions as clients see them: ``rev`` on every broadcast, ``join_group {since_rev}``
and ``get_changes``; on one node with each store, and on two nodes that share MongoDB
and Redis while clients change the same group, reconnect, and a node is killed."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import socketio
from pymongo import AsyncMongoClient

from tests.support.chat import ANA, BEN, CAROL, DAN, MATHS, ChatClient, make_token
from tests.support.chat import both_stores as backend
from tests.support.nodes import Node
from tests.test_multinode import seeded_db, start_nodes

BROADCASTS = ("message", "message_updated", "message_deleted")
NO_LIMITS = {"RATE_LIMIT_SEND_PER_S": "0", "RATE_LIMIT_EVENTS_PER_S": "0"}


async def call_ok(client: ChatClient, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    ack = await client.call(event, payload)
    assert ack["ok"], (event, payload, ack)
    return ack


def live_revs(client: ChatClient) -> list[int]:
    return [m["rev"] for event, m in client.received if event in BROADCASTS]


class Replica:
    """A client's copy of one group, kept by ``rev`` the way the protocol describes."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.mark = 0  # every change up to here is held

    def apply(self, message: dict[str, Any]) -> None:
        held = self.state.get(message["id"])
        if held is None or held["rev"] < message["rev"]:
            self.state[message["id"]] = message

    async def catch_up(self, client: ChatClient) -> None:
        ack = await call_ok(client, "join_group", {"group_id": MATHS, "since_rev": self.mark, "limit": 37})
        page, has_more = ack["changes"], ack["has_more"]
        while True:
            for message in page:
                self.apply(message)
            if not has_more:
                break
            ack = await call_ok(client, "get_changes", {"group_id": MATHS, "after_rev": page[-1]["rev"], "limit": 37})
            page, has_more = ack["changes"], ack["has_more"]
        self.mark = max(self.mark, ack["latest_rev"])

    def absorb_live(self, client: ChatClient) -> None:
        """Apply what the connection received, moving the mark over contiguous revs."""
        revs = []
        for event, message in client.received:
            if event in BROADCASTS:
                self.apply(message)
                revs.append(message["rev"])
        for rev in sorted(revs):
            if rev == self.mark + 1:
                self.mark = rev


async def everything(client: ChatClient) -> dict[str, dict[str, Any]]:
    replica = Replica()
    await replica.catch_up(client)
    return replica.state


# -- one node, both stores --


async def test_broadcasts_carry_the_next_rev_and_since_rev_catches_up_on_edits_and_deletes(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    joined = await call_ok(ana, "join_group", {"group_id": MATHS})
    assert (joined["latest_rev"], joined["latest_seq"]) == (0, 0)
    await call_ok(ben, "join_group", {"group_id": MATHS})
    sent = [(await call_ok(ana, "send_message", {"group_id": MATHS, "content": f"m{i}"}))["message"]
            for i in range(4)]
    await ben.sio.disconnect()
    # Ben is away: an old message is edited, another deleted, a new one sent.
    edited = (await call_ok(ana, "edit_message", {"group_id": MATHS, "message_id": sent[0]["id"],
                                                  "content": "m0, fixed"}))["message"]
    deleted = (await call_ok(ana, "delete_message", {"group_id": MATHS, "message_id": sent[1]["id"]}))["message"]
    new = (await call_ok(ana, "send_message", {"group_id": MATHS, "content": "new"}))["message"]
    assert [m["rev"] for m in (*sent, edited, deleted, new)] == [1, 2, 3, 4, 5, 6, 7]
    await ana.wait_for(lambda: len(live_revs(ana)) == 7)
    assert live_revs(ana) == [1, 2, 3, 4, 5, 6, 7]
    assert [e for e, _ in ana.received if e in BROADCASTS] == ["message"] * 4 + [
        "message_updated", "message_deleted", "message"]

    ben = await connect(BEN)
    back = await call_ok(ben, "join_group", {"group_id": MATHS, "since_rev": 4})
    assert back["changes"] == [edited, deleted, new]
    assert (back["has_more"], back["latest_rev"], back["latest_seq"]) == (False, 7, 5)
    assert "messages" not in back and back["unread_count"] >= 1 and BEN in back["online"]
    # Paging on with get_changes; each message once, in its current state.
    first = await call_ok(ben, "get_changes", {"group_id": MATHS, "after_rev": 0, "limit": 2})
    assert [m["id"] for m in first["changes"]] == [sent[2]["id"], sent[3]["id"]]
    assert first["has_more"] is True and first["latest_rev"] == 7
    rest = await call_ok(ben, "get_changes", {"group_id": MATHS, "after_rev": 4})
    assert rest == {"ok": True, "changes": [edited, deleted, new], "has_more": False, "latest_rev": 7}
    groups = (await call_ok(ben, "list_groups", {}))["groups"]
    assert next(g for g in groups if g["id"] == MATHS)["latest_rev"] == 7
    # since_seq keeps working as before.
    old_way = await call_ok(ben, "join_group", {"group_id": MATHS, "since_seq": 3})
    assert [m["seq"] for m in old_way["messages"]] == [4, 5] and old_way["latest_rev"] == 7


@pytest.mark.parametrize(("event", "payload", "fields"), [
    ("join_group", {"group_id": MATHS, "since_seq": 1, "since_rev": 1}, {"since_seq", "since_rev"}),
    ("join_group", {"group_id": MATHS, "since_rev": -1}, {"since_rev"}),
    ("join_group", {"group_id": MATHS, "since_rev": True}, {"since_rev"}),
    ("get_changes", {"group_id": MATHS}, {"after_rev"}),
    ("get_changes", {"group_id": MATHS, "after_rev": "3"}, {"after_rev"}),
    ("get_changes", {"group_id": MATHS, "after_rev": 0, "limit": 101}, {"limit"}),
    ("get_changes", {"group_id": MATHS, "after_rev": 0, "since": 1}, {"since"}),
    ("get_changes", {"group_id": "nope", "after_rev": 0}, {"group_id"}),
])
async def test_bad_revision_requests_are_invalid_payload(connect, event, payload, fields):
    ana = await connect(ANA)
    ack = await ana.call(event, payload)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    assert set(ack["error"]["details"]) == fields


async def test_get_changes_is_for_members_only(connect):
    dan = await connect(DAN)
    ack = await dan.call("get_changes", {"group_id": MATHS, "after_rev": 0})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member"
    ack = await dan.call("join_group", {"group_id": MATHS, "since_rev": 0})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member"


# -- several processes on MongoDB and Redis --


async def connect_to(node: Node, user_id: str) -> ChatClient:
    sio = socketio.AsyncClient(reconnection=False)
    client = ChatClient(sio, user_id)
    await sio.connect(node.url, auth={"token": make_token(user_id)}, transports=["websocket"], wait_timeout=10)
    return client


@pytest.mark.timeout(120)
@pytest.mark.serial  # thousands of database writes: alone, or a loaded machine times it out
async def test_mixed_changes_on_two_nodes_and_a_client_that_keeps_reconnecting(start_nodes, clients):
    """1,000 sends, edits and deletes by 3 clients on 2 nodes; a fourth client that
    leaves and comes back at random points (on either node) ends up holding exactly
    what everyone else holds, field by field."""
    nodes = start_nodes(2, **NO_LIMITS)
    writers = [await clients(nodes[i % 2], user) for i, user in enumerate((ANA, BEN, CAROL))]
    for writer in writers:
        await call_ok(writer, "join_group", {"group_id": MATHS})
    rng = random.Random(2026)
    total, done = 1000, 0
    acked_revs: list[int] = []

    async def write(client: ChatClient) -> None:
        nonlocal done
        own: list[str] = []
        while done < total:
            done += 1
            roll = rng.random()
            if roll < 0.45 or not own:
                ack = await call_ok(client, "send_message", {"group_id": MATHS, "content": f"{client.user_id} {done}"})
                own.append(ack["message"]["id"])
            elif roll < 0.8:
                ack = await call_ok(client, "edit_message", {"group_id": MATHS, "message_id": rng.choice(own),
                                                             "content": f"edit {done}"})
            else:
                target = own.pop(rng.randrange(len(own)))
                ack = await call_ok(client, "delete_message", {"group_id": MATHS, "message_id": target})
            acked_revs.append(ack["message"]["rev"])

    replica = Replica()
    visits = 0

    async def wander() -> None:
        nonlocal visits
        while done < total:
            client = await connect_to(rng.choice(nodes), ANA)
            try:
                await replica.catch_up(client)
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                await client.settle()
                replica.absorb_live(client)
                revs = live_revs(client)
                assert revs == sorted(set(revs)), "a connection saw a group's rev go backwards or twice"
            finally:
                await client.sio.disconnect()
            visits += 1
            await asyncio.sleep(rng.uniform(0.0, 0.3))

    await asyncio.gather(wander(), *(write(w) for w in writers))
    assert sorted(acked_revs) == list(range(1, total + 1))  # every change took its own rev, none skipped
    final = await connect_to(nodes[1], ANA)
    try:
        await replica.catch_up(final)
        truth = await everything(final)
    finally:
        await final.sio.disconnect()
    assert visits >= 3
    assert replica.mark == total
    assert replica.state == truth
    assert max(m["rev"] for m in truth.values()) == total
    # The writers, who stayed, hold the same from broadcasts alone, in rev order.
    for writer in writers:
        await writer.wait_for(lambda writer=writer: live_revs(writer)[-1:] == [total], timeout=20)
        assert live_revs(writer) == list(range(1, total + 1))
        mine = Replica()
        mine.absorb_live(writer)
        assert mine.state == truth


async def test_a_node_killed_mid_changes_leaves_revisions_exact(start_nodes, clients, seeded_db):
    nodes = start_nodes(2, **NO_LIMITS)
    writers = [await clients(nodes[0], ANA), await clients(nodes[1], BEN), await clients(nodes[0], CAROL),
               await clients(nodes[1], CAROL)]
    acked: list[dict[str, Any]] = []

    async def write(client: ChatClient, tag: str) -> None:
        own: list[str] = []
        try:
            for i in range(60):
                if i % 3 == 2 and own:
                    event, payload = "edit_message", {"message_id": own[-1], "content": f"{tag} {i} edited"}
                elif i % 7 == 6 and own:
                    event, payload = "delete_message", {"message_id": own.pop(0)}
                else:
                    event, payload = "send_message", {"content": f"{tag} {i}"}
                ack = await client.call(event, {"group_id": MATHS, **payload}, timeout=5)
                if not ack["ok"]:
                    continue
                acked.append(ack["message"])
                if event == "send_message":
                    own.append(ack["message"]["id"])
        except (TimeoutError, socketio.exceptions.SocketIOError):
            return  # its node was killed

    async def crash() -> None:
        while len(acked) < 60:
            await asyncio.sleep(0.01)
        nodes[0].kill()

    await asyncio.gather(crash(), *(write(c, f"w{i}") for i, c in enumerate(writers)))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(seeded_db["MONGODB_URI"])
    try:
        taken: list[int] = []
        async for doc in mongo[seeded_db["MONGODB_DB"]].messages.find({}, {"revs": 1}):
            taken += doc["revs"]
    finally:
        await mongo.close()
    assert sorted(taken) == list(range(1, len(taken) + 1))  # no gap, no duplicate
    reader = await clients(nodes[1], BEN)
    truth = await everything(reader)
    assert max(m["rev"] for m in truth.values()) == len(taken)
    for message in acked:  # every acknowledged change is there, or a later one of the same message
        assert truth[message["id"]]["rev"] >= message["rev"]
        if truth[message["id"]]["rev"] == message["rev"]:
            assert truth[message["id"]] == message


async def test_a_change_no_node_broadcast_is_filled_from_storage(start_nodes, clients, seeded_db):
    """A change stored but never published (its node died in between) reaches the
    rooms from storage before the next change, so nobody sees a rev jump."""
    from storage.mongo import MongoStore

    nodes = start_nodes(2)
    ana, ben = await clients(nodes[0], ANA), await clients(nodes[1], BEN)
    for client in (ana, ben):
        await call_ok(client, "join_group", {"group_id": MATHS})
    first = (await call_ok(ana, "send_message", {"group_id": MATHS, "content": "first"}))["message"]
    store = MongoStore(seeded_db["MONGODB_URI"], seeded_db["MONGODB_DB"])
    await store.open()
    try:
        silent = await store.edit_message(MATHS, first["id"], ANA, "edited where nobody saw")
    finally:
        await store.close()
    assert silent is not None and silent["rev"] == 2
    after = (await call_ok(ben, "send_message", {"group_id": MATHS, "content": "after"}))["message"]
    assert after["rev"] == 3
    for client in (ana, ben):
        await client.wait_for(lambda client=client: live_revs(client)[-1:] == [3])
        assert live_revs(client) == [1, 2, 3]
        assert client.events("message_updated") == [silent]
