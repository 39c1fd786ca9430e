"""Membership changes made by the platform take effect at once, as members notice them.

The platform edits ``study_groups`` directly in MongoDB (SecantusDB here). With the
change stream (the default) and with polling (``MEMBERSHIP_CHANGE_STREAM=off``,
``MEMBERSHIP_POLL_S=1``): a removed member's connections leave the room within
2 s and get ``membership_revoked``, receive nothing sent to the group after it, and
are refused (``not_member``) by every event of the group; an added user gets
``group_added`` with the group's figures; a deleted group sends everyone away.
The platform's call ``membership-changed`` does the same at once on the embedded
store and across two nodes that share Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    GROUPS,
    MATHS,
    NAMES,
    PHYSICS,
    SECRET,
    USERS,
    ChatClient,
    make_settings,
    make_token,
)
from tests.support.mongo import SecantusProcess, seed_mongo
from tests.test_multinode import seeded_db, start_nodes

SERVICE = {"Authorization": f"Bearer {make_token('course-platform', role='service')}"}
LIMIT_S = 2.0


BOTH_WAYS = pytest.mark.parametrize("watching", ["change-stream", "polling"])


@pytest.fixture
def watching() -> str:
    return "change-stream"


@pytest.fixture
def backend() -> str:
    return "mongo"


@pytest.fixture
def settings(watching):
    return make_settings(membership_change_stream=watching == "change-stream", membership_poll_s=1.0)


@pytest.fixture
async def groups(mongo_uri, mongo_db_name):
    """The platform's ``study_groups``, written the way the platform writes them."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    yield client[mongo_db_name].study_groups
    await client.close()


async def ok(client: ChatClient, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    ack = await client.call(event, payload)
    assert ack["ok"], (event, ack)
    return ack


async def revoked_within(client: ChatClient, group_id: str, since: float) -> float:
    """Seconds from ``since`` until ``client`` got ``membership_revoked`` for the group."""
    await client.wait_for(lambda: {"group_id": group_id} in client.events("membership_revoked"), timeout=5)
    took = time.monotonic() - since
    assert took < LIMIT_S, took
    return took


async def assert_refused_everywhere(client: ChatClient, group_id: str) -> None:
    for event, payload in [
        ("send_message", {"group_id": group_id, "content": "still here?"}),
        ("get_history", {"group_id": group_id}),
        ("get_changes", {"group_id": group_id, "after_rev": 0}),
        ("join_group", {"group_id": group_id}),
        ("mark_read", {"group_id": group_id, "seq": 1}),
        ("typing", {"group_id": group_id, "is_typing": True}),
    ]:
        ack = await client.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", (event, ack)


@BOTH_WAYS
async def test_a_removed_member_leaves_the_room_and_is_refused(watching, connect, groups):
    ana, ben, ben_elsewhere = await connect(ANA), await connect(BEN), await connect(BEN)
    for client in (ana, ben):
        await ok(client, "join_group", {"group_id": MATHS})
    await ok(ana, "send_message", {"group_id": MATHS, "content": "before"})
    await ben.wait_event("message")
    await ana.settle()

    changed = time.monotonic()
    await groups.update_one({"_id": ObjectId(MATHS)}, {"$pull": {"members": ObjectId(BEN)}})
    await revoked_within(ben, MATHS, changed)
    # Every connection of the user hears it, joined or not; nobody else does.
    await revoked_within(ben_elsewhere, MATHS, changed)
    offline = await ana.wait_for(lambda: [p for p in ana.events("presence") if not p["online"]])
    assert offline == [{"group_id": MATHS, "user_id": BEN, "name": NAMES[BEN], "online": False}]

    after = await ok(ana, "send_message", {"group_id": MATHS, "content": "after"})
    await ana.wait_for(lambda: after["message"] in ana.events("message"))
    await ben.settle()
    assert [m["content"] for m in ben.events("message")] == ["before"]
    assert ben.events("membership_revoked") == [{"group_id": MATHS}]
    assert ana.events("membership_revoked") == []
    await assert_refused_everywhere(ben, MATHS)
    # The rest of the user's groups are untouched.
    assert [g["id"] for g in (await ok(ben, "list_groups", {}))["groups"]] == []
    assert (await ok(ana, "join_group", {"group_id": MATHS}))["online"] == [ANA]


@BOTH_WAYS
async def test_an_added_user_gets_the_group(watching, connect, groups):
    ana, dan = await connect(ANA), await connect(DAN)
    await ok(ana, "join_group", {"group_id": MATHS})
    for text in ("one", "two"):
        await ok(ana, "send_message", {"group_id": MATHS, "content": text})
    await asyncio.sleep(0.2)  # Dan's groups (none) are read once his connection opens

    changed = time.monotonic()
    await groups.update_one({"_id": ObjectId(MATHS)}, {"$push": {"members": ObjectId(DAN)}})
    [added] = await dan.wait_event("group_added", timeout=5)
    assert time.monotonic() - changed < LIMIT_S
    assert added == {"group": {"id": MATHS, "name": "Maths", "latest_seq": 2, "latest_rev": 2, "unread_count": 2,
                               "mention_count": 0, "open_questions": 0}}
    # Now a member like any other.
    assert (await ok(dan, "join_group", {"group_id": MATHS}))["unread_count"] == 2
    sent = await ok(ana, "send_message", {"group_id": MATHS, "content": "welcome Dan"})
    assert (await dan.wait_event("message"))[0] == sent["message"]
    # An unrelated change of the group (its name) tells nobody anything.
    await groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"name": "Maths II"}})
    await asyncio.sleep(1.5)
    await dan.settle()
    assert len(dan.events("group_added")) == 1 and ana.events("group_added") == []


@BOTH_WAYS
async def test_a_deleted_group_sends_everyone_away(watching, connect, groups):
    members = [await connect(user) for user in (ANA, BEN, CAROL)]
    for client in members:
        await ok(client, "join_group", {"group_id": MATHS})
    changed = time.monotonic()
    await groups.delete_one({"_id": ObjectId(MATHS)})
    for client in members:
        await revoked_within(client, MATHS, changed)
    ack = await members[0].call("send_message", {"group_id": MATHS, "content": "anyone?"})
    assert ack["error"]["code"] == "group_not_found"
    # Physics (Ana, Carol) goes on.
    await ok(members[0], "join_group", {"group_id": PHYSICS})
    assert members[0].events("membership_revoked") == [{"group_id": MATHS}]


async def test_the_change_stream_keeps_its_resume_point(connect, groups):
    """A restarted watcher goes on from where the last one stopped."""
    ben = await connect(BEN)
    await ok(ben, "join_group", {"group_id": MATHS})
    await groups.update_one({"_id": ObjectId(MATHS)}, {"$pull": {"members": ObjectId(BEN)}})
    await ben.wait_event("membership_revoked", timeout=5)
    for _ in range(50):  # saved once the change is applied
        saved = await groups.database["membership_watch"].find_one({"_id": "study_groups"})
        if saved is not None:
            break
        await asyncio.sleep(0.05)
    assert saved is not None and saved["token"], saved


# -- the platform's call --

@pytest.mark.parametrize("backend", ["memory"])
async def test_the_platform_call_applies_a_change_on_the_embedded_store(backend, connect, server_url, store):
    """No change stream and no polling here: the call is the news."""
    ben, dan = await connect(BEN), await connect(DAN)
    await ok(ben, "join_group", {"group_id": MATHS})
    await asyncio.sleep(0.2)
    store.set_members(MATHS, [ANA, CAROL, DAN])
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{server_url}/study-groups/{MATHS}/membership-changed", headers=SERVICE)
        assert resp.status == 200 and await resp.json() == {"ok": True}
    # Applied before the call returns, on this node.
    await ben.settle()
    await dan.settle()
    assert ben.events("membership_revoked") == [{"group_id": MATHS}]
    assert [a["group"]["id"] for a in dan.events("group_added")] == [MATHS]
    await assert_refused_everywhere(ben, MATHS)


@pytest.mark.parametrize("backend", ["memory"])
async def test_a_removal_applied_while_a_join_checks_membership_keeps_the_room_closed(
    backend, connect, server_url, store
):
    """Ben's join has passed its membership check when the platform removes him and the
    change is applied; only then does the join enter the room. He must not stay in it."""
    ben, ana = await connect(BEN), await connect(ANA)
    await ok(ana, "join_group", {"group_id": MATHS})
    checked, go_on = asyncio.Event(), asyncio.Event()
    get_group = store.get_group

    async def slow_for_ben(group_id, user_id):
        access = await get_group(group_id, user_id)
        if user_id == BEN and not checked.is_set():
            checked.set()
            await go_on.wait()
        return access

    store.get_group = slow_for_ben
    join = asyncio.ensure_future(ben.call("join_group", {"group_id": MATHS}))
    await asyncio.wait_for(checked.wait(), 5)
    store.set_members(MATHS, [ANA, CAROL])
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{server_url}/study-groups/{MATHS}/membership-changed", headers=SERVICE)
        assert resp.status == 200
    go_on.set()
    ack = await join
    assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
    await ok(ana, "send_message", {"group_id": MATHS, "content": "after Ben left"})
    await ben.settle()
    assert ben.events("message") == []


@pytest.mark.parametrize("backend", ["memory"])
async def test_the_platform_call_after_deleting_a_group(backend, connect, server_url, store):
    ana = await connect(ANA)
    await ok(ana, "join_group", {"group_id": MATHS})
    store.remove_group(MATHS)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{server_url}/study-groups/{MATHS}/membership-changed", headers=SERVICE)
        assert resp.status == 200
    await ana.settle()
    assert ana.events("membership_revoked") == [{"group_id": MATHS}]


async def test_the_platform_call_on_one_node_evicts_on_another(start_nodes, clients, mongo_uri, mongo_db_name):
    # No change stream, and polling too slow to be what evicts.
    a, b = start_nodes(2, MEMBERSHIP_CHANGE_STREAM="off", MEMBERSHIP_POLL_S="600")
    ben, ana = await clients(b, BEN), await clients(a, ANA)
    for client in (ana, ben):
        await ok(client, "join_group", {"group_id": MATHS})
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        await mongo[mongo_db_name].study_groups.update_one({"_id": ObjectId(MATHS)}, {"$pull": {"members": ObjectId(BEN)}})
    finally:
        await mongo.close()
    changed = time.monotonic()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{a.url}/study-groups/{MATHS}/membership-changed", headers=SERVICE)
        assert resp.status == 200, await resp.text()
    await revoked_within(ben, MATHS, changed)
    sent = await ok(ana, "send_message", {"group_id": MATHS, "content": "after"})
    await ana.wait_for(lambda: sent["message"] in ana.events("message"))
    await asyncio.sleep(0.3)
    await ben.settle()
    assert ben.events("message") == []
    await assert_refused_everywhere(ben, MATHS)


async def test_the_watcher_starts_again_after_the_database_restarts(tmp_path, node_factory, clients):
    """The change stream's server goes away and comes back: changes still take effect.
    (A server process of its own: an in-process client would see the restart too.)"""
    mongo = SecantusProcess(tmp_path / "data")
    mongo.start()
    node = None
    try:
        await seed_mongo(mongo.uri, "chat", users=USERS, groups=GROUPS)
        # Polling too slow to be what evicts: the change stream must be back.
        node = node_factory({"MONGODB_URI": mongo.uri, "MONGODB_DB": "chat", "JWT_SECRET": SECRET,
                             "MEMBERSHIP_POLL_S": "600"}, "node")
        ben = await clients(node, BEN)
        await ok(ben, "join_group", {"group_id": MATHS})
        mongo.stop()
        await asyncio.sleep(1.0)
        mongo.start()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, serverSelectionTimeoutMS=5000)
        try:
            await client.chat.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$pull": {"members": ObjectId(BEN)}})
        finally:
            await client.close()
        await ben.wait_for(lambda: {"group_id": MATHS} in ben.events("membership_revoked"), timeout=20)
        assert "following the study_groups change stream" in node.log()
        await ben.sio.disconnect()
    finally:
        if node is not None:
            node.stop()  # before its database
        mongo.stop()


def test_the_membership_settings():
    from server.config import ConfigError, Settings

    base = {"MONGODB_URI": "memory://", "JWT_SECRET": SECRET}
    default = Settings.from_env(base)
    assert (default.membership_poll_s, default.membership_change_stream) == (5.0, True)
    chosen = Settings.from_env({**base, "MEMBERSHIP_POLL_S": "1.5", "MEMBERSHIP_CHANGE_STREAM": "OFF"})
    assert (chosen.membership_poll_s, chosen.membership_change_stream) == (1.5, False)
    for name, value in (("MEMBERSHIP_POLL_S", "0"), ("MEMBERSHIP_POLL_S", "soon"), ("MEMBERSHIP_CHANGE_STREAM", "yes")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})


@pytest.mark.parametrize("backend", ["memory"])
async def test_a_user_added_in_the_moment_after_connecting_gets_the_group(backend, connect, server_url, store):
    """The change comes before the server has first read the new connection's groups (they are
    read in batches, a moment after a user's first connection opens): the read finds the group
    already there, and the user, whose list of groups may predate it, is still told."""
    dan = await connect(DAN)
    assert (await ok(dan, "list_groups", {}))["groups"] == []
    store.set_members(MATHS, [ANA, BEN, CAROL, DAN])
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{server_url}/study-groups/{MATHS}/membership-changed", headers=SERVICE)
        assert resp.status == 200
    [added] = await dan.wait_event("group_added", timeout=LIMIT_S)
    assert added["group"]["id"] == MATHS
    await asyncio.sleep(0.3)
    await dan.settle()
    assert len(dan.events("group_added")) == 1
