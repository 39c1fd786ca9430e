"""Revisions in both stores: every change takes the group's next ``rev``, and
``get_changes`` returns the current state of every message changed since, exactly."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from storage.base import Message, Store
from storage.mongo import MongoStore
from storage.mongo_counter import PROBE
from storage.mongo_documents import REV_INDEX, REVS_INDEX
from storage.mongo_revisions import RevisionBackfill
from tests.support.mongo import seed_mongo
from tests.support.nodes import ROOT
from tests.test_store_contract import (
    ALGEBRA,
    ALICE,
    BOB,
    GROUPS,
    USERS,
    ZOOLOGY,
    _index_scan,
    send,
    store,
)


async def all_changes(store: Store, after: int = 0, limit: int = 100, group: str = ZOOLOGY) -> list[Message]:
    """Page through ``get_changes`` to the end."""
    got: list[Message] = []
    while True:
        page, has_more, latest = await store.get_changes(group, after_rev=after, limit=limit)
        assert [m["rev"] for m in page] == sorted({m["rev"] for m in page})
        assert all(after < m["rev"] <= latest for m in page)
        got += page
        if not has_more:
            return got
        after = page[-1]["rev"]


async def test_every_change_takes_the_next_rev(store: Store) -> None:
    first = await send(store, ALICE, "one")
    second = await send(store, BOB, "two")
    third = await send(store, ALICE, "three")
    assert [first["rev"], second["rev"], third["rev"]] == [1, 2, 3]
    edited = await store.edit_message(ZOOLOGY, first["id"], ALICE, "one!")
    deleted = await store.delete_message(ZOOLOGY, second["id"], BOB)
    again = await store.edit_message(ZOOLOGY, first["id"], ALICE, "one!!")
    assert edited and deleted and again
    assert (edited["rev"], deleted["rev"], again["rev"]) == (4, 5, 6)
    # Refused changes take nothing.
    assert await store.edit_message(ZOOLOGY, second["id"], BOB, "back") is None
    assert await store.delete_message(ZOOLOGY, second["id"], BOB) is None
    assert await store.latest_rev(ZOOLOGY) == 6
    assert await store.latest_rev(ALGEBRA) == 0
    # A duplicate send is not a change.
    _, duplicate = await store.add_message(ZOOLOGY, sender_id=ALICE, sender_name="x", content="y",
                                           client_msg_id=None)
    assert await store.latest_rev(ZOOLOGY) == 7 and duplicate is False
    # Each changed message once, in its current state, in rev order.
    changes = await all_changes(store)
    assert [(m["id"], m["rev"]) for m in changes] == [
        (third["id"], 3), (second["id"], 5), (first["id"], 6), (changes[-1]["id"], 7)]
    assert changes[1] == deleted and changes[2] == again
    assert await all_changes(store, after=5) == changes[2:]
    assert await all_changes(store, after=7) == []
    # The message object carries its current rev everywhere.
    assert await store.get_message(ZOOLOGY, first["id"]) == again
    messages, _ = await store.get_messages(ZOOLOGY, limit=10)
    assert [m["rev"] for m in messages] == [6, 5, 3, 7]


async def test_changes_page_by_rev_and_say_whether_more_follow(store: Store) -> None:
    sent = [await send(store, ALICE, f"m{i}") for i in range(10)]
    # Edit every message many times: most revisions are superseded.
    for round_ in range(12):
        for message in sent[::3]:
            assert await store.edit_message(ZOOLOGY, message["id"], ALICE, f"{message['content']} v{round_}")
    latest = await store.latest_rev(ZOOLOGY)
    assert latest == 10 + 12 * 4
    page, has_more, reported = await store.get_changes(ZOOLOGY, after_rev=0, limit=3)
    assert reported == latest and has_more is True
    assert [m["content"] for m in page] == ["m1", "m2", "m4"]
    everything = await all_changes(store, limit=3)
    assert sorted(m["id"] for m in everything) == sorted(m["id"] for m in sent)
    assert {m["content"] for m in everything if m["content"].endswith("v11")} == {
        f"m{i} v11" for i in (0, 3, 6, 9)}
    tail, has_more, _ = await store.get_changes(ZOOLOGY, after_rev=latest - 1, limit=3)
    assert [m["rev"] for m in tail] == [latest] and has_more is False


async def _rev_history(collection: Any, group: ObjectId) -> list[int]:
    taken: list[int] = []
    async for doc in collection.find({"group_id": group}, {"revs": 1}):
        taken += doc.get("revs", [])
    return sorted(taken)


async def test_a_message_changed_by_two_processes_takes_two_revs(mongo_uri: str, mongo_db_name: str) -> None:
    """The unique index cannot tell a number apart from one the same message already
    holds: a process whose idea of the top is stale must still not reuse it."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    first, second = MongoStore(mongo_uri, mongo_db_name), MongoStore(mongo_uri, mongo_db_name)
    await first.open()
    await second.open()
    try:
        sent, _ = await first.add_message(ZOOLOGY, sender_id=ALICE, sender_name="x", content="v1",
                                          client_msg_id=None)
        other = await second.edit_message(ZOOLOGY, sent["id"], ALICE, "v2")
        mine = await first.edit_message(ZOOLOGY, sent["id"], ALICE, "v3")
        assert other and mine and (sent["rev"], other["rev"], mine["rev"]) == (1, 2, 3)
        assert await second.latest_rev(ZOOLOGY) == 3
        assert await _rev_history(first.database.messages, ObjectId(ZOOLOGY)) == [1, 2, 3]
    finally:
        await first.close()
        await second.close()


async def test_concurrent_changes_from_several_clients_keep_rev_exact(mongo_uri: str, mongo_db_name: str) -> None:
    """Sends, edits and deletes through 4 store clients at once: every rev taken once,
    none skipped, and a higher rev is never visible before a lower one."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    stores = [MongoStore(mongo_uri, mongo_db_name) for _ in range(4)]
    for s in stores:
        await s.open()
    watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    gid = ObjectId(ZOOLOGY)
    done = asyncio.Event()
    snapshots = 0

    async def watch() -> None:
        # A scan of the collection is no snapshot (an edit may land behind it while a
        # later one lands ahead), so: see a top, then look up each number below it.
        # A number once taken stays in `revs`; one missing now was not visible when
        # the top was: a higher rev visible before a lower one.
        nonlocal snapshots
        collection = watcher[mongo_db_name].messages
        verified = 0
        while not done.is_set():
            top = max(await _rev_history(collection, gid), default=0)
            for rev in range(top - 1, verified, -1):
                assert await collection.find_one({"group_id": gid, "revs": rev}, {"_id": 1}), (rev, top)
            verified = max(verified, top)
            snapshots += 1
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch())
    rng = random.Random(7)
    mine: dict[str, list[str]] = {ALICE: [], BOB: []}
    changes = 0

    async def writer(index: int) -> None:
        nonlocal changes
        s, user = stores[index], (ALICE, BOB)[index % 2]
        for i in range(40):
            roll = rng.random()
            if roll < 0.5 or not mine[user]:
                message, _ = await s.add_message(ZOOLOGY, sender_id=user, sender_name="x",
                                                 content=f"w{index} {i}", client_msg_id=None)
                mine[user].append(message["id"])
                changes += 1
            elif roll < 0.8:
                if await s.edit_message(ZOOLOGY, rng.choice(mine[user]), user, f"edit {index} {i}"):
                    changes += 1
            elif await s.delete_message(ZOOLOGY, rng.choice(mine[user]), user):
                changes += 1

    try:
        await asyncio.gather(*(writer(i) for i in range(4)))
        done.set()
        await watching
        assert snapshots > 0
        assert await _rev_history(watcher[mongo_db_name].messages, gid) == list(range(1, changes + 1))
        assert await stores[2].latest_rev(ZOOLOGY) == changes
        # Catch-up from any point equals the stored state.
        stored = {m["id"]: m for m in await all_changes(stores[0], limit=17)}
        for after in (0, changes // 3, changes - 1):
            partial = await all_changes(stores[1], after=after, limit=7)
            assert all(stored[m["id"]] == m for m in partial)
            assert {m["id"] for m in partial} == {i for i, m in stored.items() if m["rev"] > after}
    finally:
        done.set()
        watching.cancel()
        await watcher.close()
        for s in stores:
            await s.close()


async def test_rev_queries_use_bounded_index_scans(mongo_uri: str, mongo_db_name: str) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    store = MongoStore(mongo_uri, mongo_db_name)
    await store.open()
    try:
        sent = [await send(store, ALICE, f"m{i}") for i in range(3 * PROBE)]
        for message in sent[:PROBE]:
            await store.edit_message(ZOOLOGY, message["id"], ALICE, "edited")
        gid = ObjectId(ZOOLOGY)
        # A page of changes: one window of the current-rev index.
        _index_scan(await store.changes_cursor(gid, 100, 151).explain(), REV_INDEX, max_keys=52)
        # The group's top rev: a range probe and point probes of the revs index.
        _index_scan(await store.rev_window_cursor(gid, 150, 150 + PROBE).explain(), REVS_INDEX,
                    max_keys=PROBE + 1)
        _index_scan(await store.rev_probe_cursor(gid, 77).explain(), REVS_INDEX, max_keys=2)
        # A cold process finds the top of a long history by galloping.
        cold = MongoStore(mongo_uri, mongo_db_name)
        await cold.open()
        assert await cold.latest_rev(ZOOLOGY) == 4 * PROBE
        await cold.close()
    finally:
        await store.close()


@pytest.mark.timeout(120)
@pytest.mark.serial  # thousands of database writes: alone, or a loaded machine times it out
async def test_older_messages_get_revisions_while_the_group_is_used(mongo_uri: str, mongo_db_name: str) -> None:
    """Messages stored before revisions existed: ``migrate-revisions`` numbers them in seq
    order, idempotently, while live changes go on, and catch-up then includes them."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    store = MongoStore(mongo_uri, mongo_db_name)
    await store.open()
    try:
        db = client[mongo_db_name]
        gid = ObjectId(ZOOLOGY)
        old = [{"_id": ObjectId(), "group_id": gid, "seq": i, "sender_id": ObjectId(ALICE), "sender": "A",
                "content": f"old {i}", "timestamp": store_time(), "client_msg_id": None, "edited_at": None,
                "deleted": False} for i in range(1, 1201)]
        await db.messages.insert_many(old)
        assert await store.latest_rev(ZOOLOGY) == 0
        assert await all_changes(store) == []

        env = {"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "PATH": "/usr/bin:/bin"}
        dry = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server", "migrate-revisions",
                                                       "--dry-run"],
                                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert "total: 1200 messages in 1 group would get a revision" in dry.stdout
        assert await store.latest_rev(ZOOLOGY) == 0

        migrating = asyncio.create_task(asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server", "migrate-revisions"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120))
        # Live changes while it runs: a send, and an edit of an old message.
        await asyncio.sleep(0.3)
        live = await send(store, BOB, "live")
        edited = await store.edit_message(ZOOLOGY, str(old[5]["_id"]), ALICE, "old 6, edited")
        assert live["seq"] == 1201 and edited is not None
        result = await migrating
        assert result.returncode == 0, result.stderr
        revs = await _rev_history(db.messages, gid)
        # 1200 old messages, one send, one edit (which gives an old message its first
        # revision when it comes before the backfill does): no gap, no duplicate.
        assert revs == list(range(1, len(revs) + 1)) and len(revs) in (1201, 1202)
        changes = await all_changes(store)
        assert len(changes) == 1201
        by_id = {m["id"]: m for m in changes}
        assert by_id[str(old[5]["_id"])]["content"] == "old 6, edited"
        # Old messages took their numbers in seq order (the live ones interleave).
        old_revs = [by_id[str(d["_id"])]["rev"] for d in old if d["_id"] != old[5]["_id"]]
        assert old_revs == sorted(old_revs)
        again = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server", "migrate-revisions"],
                                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "total: 0 messages in 0 groups got a revision" in again.stdout
        assert await store.latest_rev(ZOOLOGY) == len(revs)
        # A finished run is recorded: the server's own run at start does nothing.
        assert await RevisionBackfill(store).finished()
    finally:
        await store.close()
        await client.close()


def store_time() -> Any:
    from storage.base import now_ms

    return now_ms()
