"""The ``Store`` contract, run against both backends (``memory`` and ``mongo``).

The Mongo cases run on a SecantusDB daemon started by the suite, or on the
server ``MONGODB_URI`` names; each test in a database of its own (fixtures in
``tests/support/mongo.py``). The last
section holds what only the Mongo store can show: seq allocation across several
clients at once, index use (``explain``), and behaviour while the server is down.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from storage.base import Message, NewMessage, StorageUnavailable, Store
from storage.memory import MemoryStore
from storage.mongo import MongoStore
from storage.mongo_counter import PROBE
from storage.mongo_documents import (
    CLIENT_MSG_INDEX,
    LIVE_INDEX,
    MARKER_INDEX,
    OWN_LIVE_INDEX,
    REV_INDEX,
    REVS_INDEX,
    SEQ_INDEX,
    TAGS_INDEX,
    WORDS_INDEX,
    client_msg_filter,
    live_message_filter,
)
from storage.mongo_tally import DELETED, UNANSWERED, GroupTally
from tests.support.mongo import SecantusProcess, secantus_uri, seed_mongo
from tests.support.ports import free_port

ALICE = "65aaaaaaaaaaaaaaaaaaaa01"  # "  Alice " + " Liddell "
BOB = "65bbbbbbbbbbbbbbbbbbbb02"  # full_name only
CAROL = "65cccccccccccccccccccc03"  # both parts blank: named by id
DAVE = "65dddddddddddddddddddd04"  # no users document
EVE = "65eeeeeeeeeeeeeeeeeeee05"  # last_name only, in no group
ZOOLOGY = "65f0000000000000000000a1"  # Alice, Bob, Dave
ALGEBRA = "65f0000000000000000000b2"  # Alice, Bob
ALGEBRA_TOO = "65f0000000000000000000c3"  # Alice; same name, higher id
CHEMISTRY = "65f0000000000000000000d4"  # Bob
NOWHERE = "65f0000000000000000000ff"  # no such group

USERS = [
    (ALICE, "  Alice ", " Liddell "),
    (BOB, "Bob", None),
    (CAROL, " ", ""),
    (EVE, None, "Evans"),
]
GROUPS = [
    (ZOOLOGY, "Zoology", [ALICE, BOB, DAVE]),
    (ALGEBRA, "Algebra", [ALICE, BOB]),
    (ALGEBRA_TOO, "Algebra", [ALICE]),
    (CHEMISTRY, "Chemistry", [BOB]),
]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HEX_ID = re.compile(r"^[0-9a-f]{24}$")


@pytest.fixture(params=["memory", "mongo"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An open store holding ``USERS`` and ``GROUPS`` and no messages."""
    backend: Store
    if request.param == "memory":
        memory = MemoryStore()
        for user_id, full_name, last_name in USERS:
            memory.add_user(user_id, full_name, last_name)  # type: ignore[arg-type]
        for group_id, name, members in GROUPS:
            memory.add_group(group_id, name, members)
        backend = memory
    else:
        uri = request.getfixturevalue("mongo_uri")
        db_name = request.getfixturevalue("mongo_db_name")
        await seed_mongo(uri, db_name, USERS, GROUPS)
        backend = MongoStore(uri, db_name)
    await backend.open()
    yield backend
    await backend.close()


async def send(store: Store, sender: str, content: str = "hi", *, group: str = ZOOLOGY,
               client_msg_id: str | None = None) -> Message:
    message, duplicate = await store.add_message(
        group, sender_id=sender, sender_name=f"name of {sender}", content=content,
        client_msg_id=client_msg_id,
    )
    assert duplicate is False
    return message


def seqs(messages: list[Message]) -> list[int]:
    return [m["seq"] for m in messages]


# -- users and groups --


async def test_get_user_builds_the_display_name(store: Store) -> None:
    alice = await store.get_user(ALICE)
    assert alice is not None and (alice.id, alice.name) == (ALICE, "Alice Liddell")
    assert (await store.get_user(BOB)).name == "Bob"  # type: ignore[union-attr]
    assert (await store.get_user(EVE)).name == "Evans"  # type: ignore[union-attr]
    assert (await store.get_user(CAROL)).name == CAROL  # type: ignore[union-attr]
    assert await store.get_user(DAVE) is None


async def test_get_group_tells_members_from_others(store: Store) -> None:
    member = await store.get_group(ZOOLOGY, DAVE)
    assert member is not None
    assert (member.id, member.name, member.is_member) == (ZOOLOGY, "Zoology", True)
    outsider = await store.get_group(CHEMISTRY, ALICE)
    assert outsider is not None and outsider.is_member is False
    assert await store.get_group(NOWHERE, ALICE) is None


async def test_get_group_for_several_users_in_one_read(store: Store) -> None:
    found = await store.get_group_for(ZOOLOGY, [ALICE, EVE, DAVE, "not-an-id"])
    assert found is not None
    assert {u: (a.id, a.name, a.is_member) for u, a in found.items()} == {
        ALICE: (ZOOLOGY, "Zoology", True), EVE: (ZOOLOGY, "Zoology", False),
        DAVE: (ZOOLOGY, "Zoology", True), "not-an-id": (ZOOLOGY, "Zoology", False),
    }
    assert await store.get_group_for(NOWHERE, [ALICE]) is None
    assert await store.get_group_for("not-an-id", [ALICE]) is None


async def test_list_groups_by_name_with_counts(store: Store) -> None:
    await send(store, BOB, group=ALGEBRA)
    await send(store, ALICE, group=ALGEBRA)
    await send(store, BOB, group=ZOOLOGY)
    await store.mark_read(ZOOLOGY, ALICE, 1)
    groups = [g.to_wire() for g in await store.list_groups(ALICE)]
    assert groups == [
        {"id": ALGEBRA, "name": "Algebra", "latest_seq": 2, "latest_rev": 2, "unread_count": 1, "mention_count": 0, "open_questions": 0},
        {"id": ALGEBRA_TOO, "name": "Algebra", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
        {"id": ZOOLOGY, "name": "Zoology", "latest_seq": 1, "latest_rev": 1, "unread_count": 0, "mention_count": 0, "open_questions": 0},
    ]
    assert [g.id for g in await store.list_groups(BOB)] == [ALGEBRA, CHEMISTRY, ZOOLOGY]
    assert await store.list_groups(EVE) == []


# -- sending --


async def test_seq_is_contiguous_from_one_and_ids_are_lowercase(store: Store) -> None:
    assert await store.latest_seq(ZOOLOGY) == 0
    sent = [await send(store, ALICE if i % 2 else BOB, f"m{i}") for i in range(5)]
    assert seqs(sent) == [1, 2, 3, 4, 5]
    assert await store.latest_seq(ZOOLOGY) == 5
    first = sent[0]
    assert first["type"] == "message"
    assert first["group_id"] == ZOOLOGY and first["sender_id"] == BOB
    assert HEX_ID.match(first["id"])
    assert ISO_MS.match(first["timestamp"])
    assert (first["sender"], first["sender_name"]) == (f"name of {BOB}",) * 2
    assert (first["content"], first["client_msg_id"], first["edited_at"], first["deleted"]) == (
        "m0", None, None, False,
    )
    assert await send(store, BOB, group=ALGEBRA) and await store.latest_seq(ALGEBRA) == 1


async def test_duplicate_client_msg_id_returns_the_first_message(store: Store) -> None:
    first = await send(store, ALICE, "original", client_msg_id="c-1")
    again, duplicate = await store.add_message(
        ZOOLOGY, sender_id=ALICE, sender_name="Alice", content="different", client_msg_id="c-1"
    )
    assert duplicate is True and again == first
    assert await store.latest_seq(ZOOLOGY) == 1
    # The key is (sender, group, client_msg_id): other senders and groups are new sends.
    other_sender = await send(store, BOB, client_msg_id="c-1")
    other_group = await send(store, ALICE, group=ALGEBRA, client_msg_id="c-1")
    assert (other_sender["seq"], other_group["seq"]) == (2, 1)
    # Without a client_msg_id nothing is deduplicated.
    assert seqs([await send(store, ALICE, "x"), await send(store, ALICE, "x")]) == [3, 4]


async def test_a_batch_of_sends_is_stored_in_order_and_finds_repeats(store: Store) -> None:
    """``add_messages``: each send's answer in its place, repeats (of an earlier send or of one
    in the same batch) answered with the first stored, the others numbered on without a hole."""
    first = await send(store, ALICE, "first", client_msg_id="c-1")

    def fields(sender: str, content: str, client_msg_id: str | None) -> NewMessage:
        return {"sender_id": sender, "sender_name": "x", "content": content, "client_msg_id": client_msg_id}

    answers = await store.add_messages(ZOOLOGY, [
        fields(ALICE, "second", "c-2"),
        fields(ALICE, "repeat of first", "c-1"),
        fields(BOB, "bob's own c-1", "c-1"),
        fields(ALICE, "repeat of second", "c-2"),
        fields(BOB, "no id", None),
    ])
    stored = [a for a in answers if not isinstance(a, BaseException)]
    assert len(stored) == 5, answers
    assert [(m["seq"], m["content"], duplicate) for m, duplicate in stored] == [
        (2, "second", False), (1, "first", True), (3, "bob's own c-1", False), (2, "second", True), (4, "no id", False),
    ]
    assert stored[1][0] == first
    messages, _ = await store.get_messages(ZOOLOGY, limit=10)
    assert [(m["seq"], m["rev"]) for m in messages] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert await store.add_messages(ZOOLOGY, []) == []


async def test_batches_from_several_processes_get_exact_seqs(mongo_uri: str, mongo_db_name: str) -> None:
    """Batches of 10 through 4 clients at once, each process numbering from what it last
    saw: the unique indexes refuse the numbers another took, and every send ends up stored
    once, seq 1..200, with repeats of another process's sends found."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    stores = [MongoStore(mongo_uri, mongo_db_name) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        def batch(first: int) -> list[NewMessage]:
            return [{"sender_id": (ALICE, BOB)[i % 2], "sender_name": "x", "content": f"m{i}",
                     "client_msg_id": f"c-{i}"} for i in range(first, first + 10)]

        # Every batch twice (on different processes): 400 sends, 200 of them repeats.
        batches = [stores[(k + k // 20) % 4].add_messages(ZOOLOGY, batch(10 * (k % 20))) for k in range(40)]
        answers = [a for answers in await asyncio.gather(*batches) for a in answers]
        assert not [a for a in answers if isinstance(a, BaseException)]
        stored = [a for a in answers if not isinstance(a, BaseException)]
        originals = {m["client_msg_id"]: m for m, duplicate in stored if not duplicate}
        assert sorted(m["seq"] for m in originals.values()) == list(range(1, 201))
        assert all(originals[m["client_msg_id"]] == m for m, duplicate in stored if duplicate)
        assert await stores[1].latest_seq(ZOOLOGY) == 200 and await stores[2].latest_rev(ZOOLOGY) == 200
    finally:
        for s in stores:
            await s.close()


async def test_the_embedded_history_is_not_walked_by_the_garbage_collector() -> None:
    """A plain message kept by the embedded store holds only atoms, so the collector stops
    tracking it, and its pauses grow far more slowly with the history kept (a full
    collection took a third of a second at 100,000 messages when each message kept five
    tracked containers; 30 ms after). The indexes beside the history hold ints and strings
    in dicts the collector stops tracking, and ints packed in arrays or bytearrays, so a
    full collection visits few items per message: 11 before that (30 ms became 19 ms at
    100,000 messages); then 6, with an array tracked for every word seen twice and the ids
    and the change log visited item by item (a full collection at a million messages took
    0.41 s); now 3 (0.10 s)."""
    memory = MemoryStore()
    memory.add_group(ZOOLOGY, "Zoology", [ALICE, BOB])

    def walked() -> tuple[int, int]:
        """Objects the collector tracks, and the items of their containers it visits."""
        tracked = gc.get_objects()
        # By type, not isinstance: a proxy of a dead weak reference raises on isinstance.
        containers = (list, dict, tuple, set)
        return len(tracked), sum(len(o) for o in tracked if issubclass(type(o), containers))

    gc.collect()
    objects, items = walked()
    for i in range(20_000):
        await send(memory, (ALICE, BOB)[i % 2], f"note {i}: page {i * 7}", client_msg_id=f"c-{i}")
    await asyncio.sleep(0)  # the words of new messages are filed at the end of the loop iteration
    gc.collect()
    objects_after, items_after = walked()
    assert objects_after - objects < 200  # not one per message, nor per word seen again
    # The history and the sorted vocabulary (about two new words a message).
    assert (items_after - items) / 20_000 <= 3.5
    # What callers get is their own copy, with lists, like the MongoDB store's.
    message = (await memory.get_messages(ZOOLOGY, limit=1))[0][0]
    assert message["mentions"] == [] and message["reactions"] == [] and message["attachments"] == []
    message["mentions"].append(BOB)
    assert (await memory.get_messages(ZOOLOGY, limit=1))[0][0]["mentions"] == []


# -- paging --


@pytest.mark.parametrize("count", [0, 5, 6])
async def test_paging_boundaries(store: Store, count: int) -> None:
    for i in range(count):
        await send(store, ALICE, f"m{i + 1}")

    async def page(**bounds: int) -> tuple[list[int], bool]:
        messages, has_more = await store.get_messages(ZOOLOGY, limit=5, **bounds)
        assert [m["content"] for m in messages] == [f"m{s}" for s in seqs(messages)]
        return seqs(messages), has_more

    everything = list(range(1, count + 1))
    if count <= 5:  # empty, or exactly one page
        assert await page() == (everything, False)
        assert await page(after_seq=0) == (everything, False)
        assert await page(before_seq=count + 1) == (everything, False)
        assert await page(before_seq=100) == (everything, False)
    else:  # one more than a page
        assert await page() == ([2, 3, 4, 5, 6], True)
        assert await page(before_seq=100) == ([2, 3, 4, 5, 6], True)
        assert await page(before_seq=7) == ([2, 3, 4, 5, 6], True)
        assert await page(before_seq=6) == ([1, 2, 3, 4, 5], False)
        assert await page(before_seq=2) == ([1], False)
        assert await page(after_seq=0) == ([1, 2, 3, 4, 5], True)
        assert await page(after_seq=1) == ([2, 3, 4, 5, 6], False)
        assert await page(after_seq=5) == ([6], False)
    assert await page(before_seq=1) == ([], False)
    assert await page(after_seq=count) == ([], False)
    assert await page(after_seq=100) == ([], False)


# -- edit and delete --


async def test_edit_changes_content_for_the_sender_only(store: Store) -> None:
    message = await send(store, ALICE, "draft", client_msg_id="c-9")
    assert await store.edit_message(ZOOLOGY, message["id"], BOB, "hijack") is None
    assert await store.edit_message(ALGEBRA, message["id"], ALICE, "wrong group") is None
    assert await store.edit_message(ZOOLOGY, str(ObjectId()), ALICE, "nothing") is None
    edited = await store.edit_message(ZOOLOGY, message["id"], ALICE, "final")
    assert edited is not None
    assert edited["content"] == "final" and ISO_MS.match(edited["edited_at"] or "")
    assert {**edited, "content": "draft", "edited_at": None, "rev": 1} == message
    assert edited["rev"] == 2  # the edit is the group's second change
    assert await store.get_message(ZOOLOGY, message["id"]) == edited
    assert await store.get_message(ALGEBRA, message["id"]) is None
    assert (await store.get_messages(ZOOLOGY, limit=10))[0] == [edited]


async def test_delete_leaves_a_tombstone(store: Store) -> None:
    message = await send(store, ALICE, "oops", client_msg_id="c-2")
    edited = await store.edit_message(ZOOLOGY, message["id"], ALICE, "oops!")
    assert edited is not None
    assert await store.delete_message(ZOOLOGY, message["id"], BOB) is None
    assert await store.delete_message(ALGEBRA, message["id"], ALICE) is None
    deleted = await store.delete_message(ZOOLOGY, message["id"], ALICE)
    assert deleted == {**edited, "content": "", "deleted": True, "rev": 3}
    assert deleted["client_msg_id"] == "c-2" and deleted["edited_at"] == edited["edited_at"]
    assert await store.delete_message(ZOOLOGY, message["id"], ALICE) is None
    assert await store.edit_message(ZOOLOGY, message["id"], ALICE, "back") is None
    assert await store.get_message(ZOOLOGY, message["id"]) == deleted
    assert (await store.get_messages(ZOOLOGY, limit=10))[0] == [deleted]
    # The seq stays taken, and a resend of the same client_msg_id still finds it.
    assert await store.latest_seq(ZOOLOGY) == 1
    again, duplicate = await store.add_message(
        ZOOLOGY, sender_id=ALICE, sender_name="Alice", content="oops", client_msg_id="c-2"
    )
    assert duplicate is True and again == deleted


# -- read markers --


async def test_read_markers_never_move_back_and_clamp(store: Store) -> None:
    state = await store.read_state(ZOOLOGY, ALICE)
    assert (state.last_read_seq, state.unread_count) == (0, 0)
    assert (await store.mark_read(ZOOLOGY, ALICE, 7)).last_read_seq == 0  # empty group
    for sender in (BOB, BOB, ALICE, DAVE, BOB):
        await send(store, sender)
    state = await store.read_state(ZOOLOGY, ALICE)
    assert (state.last_read_seq, state.unread_count) == (0, 4)
    state = await store.mark_read(ZOOLOGY, ALICE, 3)
    assert (state.last_read_seq, state.unread_count) == (3, 2)
    state = await store.mark_read(ZOOLOGY, ALICE, 1)
    assert (state.last_read_seq, state.unread_count) == (3, 2)
    state = await store.mark_read(ZOOLOGY, ALICE, 2**53 - 1)
    assert (state.last_read_seq, state.unread_count) == (5, 0)
    other = await store.read_state(ZOOLOGY, BOB)
    assert (other.last_read_seq, other.unread_count) == (0, 2)


async def test_unread_leaves_out_own_and_deleted_messages(store: Store) -> None:
    mine = await send(store, ALICE)
    theirs = [await send(store, BOB) for _ in range(3)]
    await store.delete_message(ZOOLOGY, theirs[1]["id"], BOB)
    await store.delete_message(ZOOLOGY, mine["id"], ALICE)
    assert (await store.read_state(ZOOLOGY, ALICE)).unread_count == 2
    assert (await store.read_state(ZOOLOGY, DAVE)).unread_count == 2
    assert (await store.read_state(ZOOLOGY, BOB)).unread_count == 0
    assert (await store.mark_read(ZOOLOGY, DAVE, 3)).unread_count == 1


# -- Mongo only --


async def test_concurrent_writers_in_several_processes_get_exact_seqs(
    mongo_uri: str, mongo_db_name: str
) -> None:
    """200 sends through 4 clients at once: seq 1..200, each once, never a gap in sight."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    stores = [MongoStore(mongo_uri, mongo_db_name) for _ in range(4)]
    for s in stores:
        await s.open()
    watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    done = asyncio.Event()
    snapshots = 0

    async def watch() -> None:
        # A higher seq must never be visible before a lower one.
        nonlocal snapshots
        collection = watcher[mongo_db_name].messages
        while not done.is_set():
            seen = [d["seq"] async for d in collection.find({}, {"seq": 1}).sort("seq", 1)]
            assert seen == list(range(1, len(seen) + 1))
            snapshots += 1
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch())
    try:
        sends = [
            stores[i % 4].add_message(
                ZOOLOGY, sender_id=(ALICE, BOB)[i % 2], sender_name="x", content=f"m{i}",
                client_msg_id=f"c-{i}",
            )
            for i in range(200)
        ]
        results = await asyncio.gather(*sends)
        done.set()
        await watching
        assert sorted(m["seq"] for m, _dup in results) == list(range(1, 201))
        assert not any(dup for _m, dup in results)
        messages, has_more = await stores[0].get_messages(ZOOLOGY, limit=100, after_seq=100)
        assert seqs(messages) == list(range(101, 201)) and has_more is False
        assert {m["content"] for m in messages} <= {f"m{i}" for i in range(200)}
        assert await stores[3].latest_seq(ZOOLOGY) == 200
        assert snapshots > 0
    finally:
        done.set()
        watching.cancel()
        await watcher.close()
        for s in stores:
            await s.close()


async def test_same_send_from_two_processes_is_stored_once(
    mongo_uri: str, mongo_db_name: str
) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    stores = [MongoStore(mongo_uri, mongo_db_name) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(*(
            s.add_message(ZOOLOGY, sender_id=ALICE, sender_name="A", content="once",
                          client_msg_id="retry-1")
            for s in stores for _ in range(3)
        ))
        assert len({m["id"] for m, _dup in results}) == 1
        assert sorted(dup for _m, dup in results) == [False] + [True] * 8
        assert await stores[0].latest_seq(ZOOLOGY) == 1
    finally:
        for s in stores:
            await s.close()


async def test_indexes_are_created_idempotently(mongo_uri: str, mongo_db_name: str) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    for _ in range(2):  # a restart finds them in place
        store = MongoStore(mongo_uri, mongo_db_name)
        await store.open()
        await store.close()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        db = client[mongo_db_name]

        async def names(collection: str) -> set[str]:
            return {ix["name"] async for ix in await db[collection].list_indexes()}

        assert await names("messages") == {
            "_id_", SEQ_INDEX, REVS_INDEX, REV_INDEX, CLIENT_MSG_INDEX, LIVE_INDEX, OWN_LIVE_INDEX, TAGS_INDEX,
            WORDS_INDEX}
        assert await names("read_markers") == {"_id_", MARKER_INDEX}
        # The wider application's collections are only read.
        assert await names("users") == await names("study_groups") == {"_id_"}
    finally:
        await client.close()


async def test_migrated_messages_without_sender_id(mongo_uri: str, mongo_db_name: str) -> None:
    """A legacy record with no usable id: ``sender_id`` null, its stored name, unread for all."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = MongoStore(mongo_uri, mongo_db_name)
    try:
        await client[mongo_db_name].messages.insert_one({
            "_id": ObjectId(), "group_id": ObjectId(ZOOLOGY), "seq": 1, "sender_id": None,
            "sender": "Old Timer", "content": "from the old chat",
            "timestamp": datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC),
            "client_msg_id": None, "edited_at": None, "deleted": False,
        })
        await store.open()
        (legacy,), _ = await store.get_messages(ZOOLOGY, limit=10)
        assert (legacy["sender_id"], legacy["sender"], legacy["sender_name"]) == (
            None, "Old Timer", "Old Timer")
        assert legacy["timestamp"] == "2024-05-01T12:00:00.250Z"
        assert (await send(store, ALICE))["seq"] == 2
        assert (await store.read_state(ZOOLOGY, ALICE)).unread_count == 1
        assert await store.edit_message(ZOOLOGY, legacy["id"], ALICE, "mine now") is None
    finally:
        await store.close()
        await client.close()


def _explain_facts(explain: Any) -> tuple[set[str], set[str], int, int]:
    """Stage names, index names, and the most keys and documents examined.

    SecantusDB answers in mongod 8.2's shape: ``queryPlanner.winningPlan`` is
    a tree of ``inputStage``s (``FETCH`` over ``IXSCAN`` with ``indexName``,
    under a ``SORT`` even where mongod would walk the index in order) and
    ``executionStats`` holds ``totalKeysExamined``, which there is simply the
    number of documents the FILTER matches, limit ignored (it has no limit
    pushdown, so that is also what it reads). MongoDB reports real counts and
    nests them differently for aggregations and the slot-based engine, so the
    whole document is walked.
    """
    stages: set[str] = set()
    indexes: set[str] = set()
    keys = docs = 0

    def walk(node: Any) -> None:
        nonlocal keys, docs
        if isinstance(node, dict):
            if isinstance(node.get("stage"), str):
                stages.add(node["stage"])
            if isinstance(node.get("indexName"), str):
                indexes.add(node["indexName"])
            if isinstance(node.get("totalKeysExamined"), int):
                keys = max(keys, node["totalKeysExamined"])
            if isinstance(node.get("totalDocsExamined"), int):
                docs = max(docs, node["totalDocsExamined"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(explain)
    return stages, indexes, keys, docs


def _index_scan(explain: Any, index: str, *, max_keys: int) -> None:
    """``explain`` reads ``index`` only (``_id_`` may be mongod's IDHACK), and few keys of it."""
    stages, indexes, keys, _docs = _explain_facts(explain)
    assert "COLLSCAN" not in stages, explain
    assert any("IXSCAN" in s or s in ("COUNT_SCAN", "IDHACK") for s in stages), explain
    assert indexes <= {index} and (indexes or "IDHACK" in stages), explain
    assert keys <= max_keys, (keys, explain)


async def test_hot_queries_use_bounded_index_scans(mongo_uri: str, mongo_db_name: str) -> None:
    """Every hot query is an index scan whose size does not grow with the group."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    store = MongoStore(mongo_uri, mongo_db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await store.open()
    try:
        total = 3 * PROBE
        sent = [await send(store, (ALICE, BOB)[i % 2], client_msg_id=f"c-{i}")
                for i in range(total)]
        await store.mark_read(ZOOLOGY, ALICE, total - 4)
        gid, uid = ObjectId(ZOOLOGY), ObjectId(ALICE)
        db = client[mongo_db_name]
        own = MongoStore.own_unread_filter(gid, uid, total - 4, total)

        async def explain_count(query: dict[str, Any]) -> Any:
            # What count_documents sends.
            return await db.command("explain", {
                "aggregate": "messages", "cursor": {},
                "pipeline": [{"$match": query}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
            })

        # Pages: latest, before_seq, after_seq (one more row than the limit).
        _index_scan(await store.range_cursor(gid, total - 50, total).explain(), SEQ_INDEX,
                    max_keys=51)
        _index_scan(await store.range_cursor(gid, 20, 70).explain(), SEQ_INDEX, max_keys=51)
        _index_scan(await store.range_cursor(gid, 100, 151).explain(), SEQ_INDEX, max_keys=52)
        # The group's top seq: a bounded range probe, and point probes when far behind.
        probe = store.range_cursor(gid, total - 10, total - 10 + PROBE, newest_first=True, limit=1)
        _index_scan(await probe.explain(), SEQ_INDEX, max_keys=PROBE + 1)
        _index_scan(await store.seq_probe_cursor(gid, 77).explain(), SEQ_INDEX, max_keys=2)
        # Deduplication by client_msg_id.
        lookup = db.messages.find(client_msg_filter(gid, uid, "c-10"))
        _index_scan(await lookup.explain(), CLIENT_MSG_INDEX, max_keys=2)
        # Unread counts and the read marker.
        _index_scan(await explain_count(own), OWN_LIVE_INDEX, max_keys=5)
        # A reader who read nothing and wrote nothing: the count reads no other
        # messages than the reader's own, and the group's deleted ones once per
        # process (storage.mongo_tally), then the changes since.
        for seq in (10, 50, 150):
            await store.delete_message(ZOOLOGY, sent[seq - 1]["id"], sent[seq - 1]["sender_id"])
        dave = ObjectId(DAVE)
        own = MongoStore.own_unread_filter(gid, dave, 0, total)
        _index_scan(await explain_count(own), OWN_LIVE_INDEX, max_keys=1)
        loads = GroupTally.load_filters(gid)
        _index_scan(await db.messages.find(loads[DELETED]).explain(), LIVE_INDEX, max_keys=4)
        _index_scan(await db.messages.find(loads[UNANSWERED]).explain(), TAGS_INDEX, max_keys=1)
        elements = "secantusVersion" not in await client.admin.command("buildInfo")
        changes = GroupTally.changes_filter(gid, total - 2, total + 3, element_ranges=elements)
        _index_scan(await db.messages.find(changes).explain(), REVS_INDEX, max_keys=6)
        assert (await store.read_state(ZOOLOGY, DAVE)).unread_count == total - 3
        marker = db.read_markers.find({"user_id": uid, "group_id": gid})
        _index_scan(await marker.explain(), MARKER_INDEX, max_keys=2)
        # A message by id; edit and delete add conditions to that lookup.
        mid = ObjectId(sent[10]["id"])
        _index_scan(await db.messages.find({"_id": mid}).explain(), "_id_", max_keys=2)
        edit = db.messages.find(live_message_filter(mid, gid, uid))
        if "secantusVersion" not in await client.admin.command("buildInfo"):
            # SecantusDB answers this filter from its `_id` clause, but its explain
            # mirrors a planner without that fallback and reports a COLLSCAN.
            _index_scan(await edit.explain(), "_id_", max_keys=2)
    finally:
        await client.close()
        await store.close()


async def test_unreachable_server_is_storage_unavailable(tmp_path: Path) -> None:
    store = MongoStore(secantus_uri(free_port()), "nothing")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="MONGODB_URI"):
        await store.open()
    assert time.monotonic() - started < 10
    with pytest.raises(StorageUnavailable):
        await store.ping()  # never opened


async def test_store_survives_a_server_restart(tmp_path: Path) -> None:
    server = SecantusProcess(tmp_path / "data")
    server.start()
    store = MongoStore(secantus_uri(server.port, serverSelectionTimeoutMS=1000), "chat")
    try:
        await seed_mongo(server.uri, "chat", USERS, GROUPS)
        await store.open()
        first = await send(store, ALICE, "before")
        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.ping()
        assert time.monotonic() - started < 5
        with pytest.raises(StorageUnavailable):
            await send(store, ALICE, "while down")
        with pytest.raises(StorageUnavailable):
            await store.get_messages(ZOOLOGY, limit=10)
        server.start()  # same port, same data
        deadline = time.monotonic() + 20
        while True:
            try:
                await store.ping()
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect"
                await asyncio.sleep(0.2)
        second = await send(store, ALICE, "after")
        assert second["seq"] == 2
        assert (await store.get_messages(ZOOLOGY, limit=10))[0] == [first, second]
    finally:
        await store.close()
        server.stop()
