"""The conversation part of the ``Store`` contract (reactions, pins, answers, replies,
tags and their counts) on both backends, and the Mongo queries behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from storage import conversation
from storage.base import Message, Store
from storage.mongo import MongoStore
from storage.mongo_conversation import tag_filter
from storage.mongo_documents import TAGS_INDEX
from tests.support.mongo import seed_mongo
from tests.test_store_contract import (
    ALICE,
    BOB,
    DAVE,
    GROUPS,
    USERS,
    ZOOLOGY,
    _index_scan,
    send,
    store,
)

THUMBS, PARTY, FAMILY = "👍", "🎉", "👨‍👩‍👧"


async def question(store: Store, sender: str = ALICE, content: str = "¿Cómo se deriva x²?") -> Message:
    message, _ = await store.add_message(
        ZOOLOGY, sender_id=sender, sender_name="n", content=content, client_msg_id=None, kind="question"
    )
    return message


async def test_reactions_keep_first_use_order_and_are_idempotent(store: Store) -> None:
    message = await send(store, ALICE)
    first = await store.react(ZOOLOGY, message["id"], BOB, THUMBS, True)
    assert first is not None
    reacted, changed = first
    assert changed and reacted["rev"] == message["rev"] + 1
    assert reacted["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [BOB]}]
    again = await store.react(ZOOLOGY, message["id"], BOB, THUMBS, True)
    assert again is not None and again[1] is False and again[0]["rev"] == reacted["rev"]
    await store.react(ZOOLOGY, message["id"], ALICE, FAMILY, True)
    both = await store.react(ZOOLOGY, message["id"], ALICE, THUMBS, True)
    assert both is not None
    assert both[0]["reactions"] == [
        {"emoji": THUMBS, "count": 2, "user_ids": [BOB, ALICE]},
        {"emoji": FAMILY, "count": 1, "user_ids": [ALICE]},
    ]
    # Taking back the last reaction of an emoji takes the emoji away; taking back nothing changes nothing.
    gone = await store.react(ZOOLOGY, message["id"], ALICE, FAMILY, False)
    assert gone is not None and gone[1] and [r["emoji"] for r in gone[0]["reactions"]] == [THUMBS]
    nothing = await store.react(ZOOLOGY, message["id"], DAVE, PARTY, False)
    assert nothing is not None and nothing[1] is False
    changes, _, latest = await store.get_changes(ZOOLOGY, after_rev=message["rev"], limit=10)
    assert [m["id"] for m in changes] == [message["id"]] and changes[0]["rev"] == latest == message["rev"] + 4


async def test_reactions_show_twenty_reactors_and_count_all(store: Store) -> None:
    message = await send(store, ALICE)
    reactors = [f"65{i:022x}" for i in range(1, 26)]
    for user in reactors:
        await store.react(ZOOLOGY, message["id"], user, THUMBS, True)
    stored = await store.get_message(ZOOLOGY, message["id"])
    assert stored is not None
    assert stored["reactions"] == [{"emoji": THUMBS, "count": 25, "user_ids": reactors[:20]}]


async def test_a_message_takes_at_most_twenty_emoji(store: Store) -> None:
    message = await send(store, ALICE)
    emoji = ["😀", "😃", "😄", "😁", "😆", "😅", "🤣", "😂", "🙂", "🙃",
             "😉", "😊", "😇", "🥰", "😍", "🤩", "😘", "😗", "😚", "😙"]
    for one in emoji:
        await store.react(ZOOLOGY, message["id"], BOB, one, True)
    with pytest.raises(conversation.TooManyEmoji):
        await store.react(ZOOLOGY, message["id"], BOB, THUMBS, True)
    # One of the twenty again is still fine.
    assert (await store.react(ZOOLOGY, message["id"], ALICE, "😀", True)) is not None


async def test_deleted_and_unknown_messages_take_no_changes(store: Store) -> None:
    message = await send(store, ALICE)
    await store.react(ZOOLOGY, message["id"], BOB, THUMBS, True)
    await store.pin(ZOOLOGY, message["id"], BOB)
    deleted = await store.delete_message(ZOOLOGY, message["id"], ALICE)
    assert deleted is not None
    assert (deleted["reactions"], deleted["pinned"], deleted["mentions"]) == ([], None, [])
    for change in (
        store.react(ZOOLOGY, message["id"], BOB, PARTY, True),
        store.pin(ZOOLOGY, message["id"], None),
        store.set_answer(ZOOLOGY, message["id"], None),
        store.react(ZOOLOGY, str(ObjectId()), BOB, PARTY, True),
    ):
        assert await change is None
    assert (await store.get_messages(ZOOLOGY, limit=10, tag=conversation.TAG_PINNED))[0] == []


async def test_pins_are_idempotent_filtered_and_limited(store: Store) -> None:
    messages = [await send(store, (ALICE, BOB)[i % 2], f"m{i}") for i in range(conversation.MAX_PINNED_PER_GROUP + 4)]
    pinned = await store.pin(ZOOLOGY, messages[3]["id"], BOB)
    assert pinned is not None and pinned[1]
    assert pinned[0]["pinned"]["by"] == BOB and pinned[0]["pinned"]["at"].endswith("Z")
    again = await store.pin(ZOOLOGY, messages[3]["id"], ALICE)
    assert again is not None and again[1] is False and again[0]["pinned"] == pinned[0]["pinned"]
    for message in messages[4 : 3 + conversation.MAX_PINNED_PER_GROUP]:
        await store.pin(ZOOLOGY, message["id"], ALICE)
    with pytest.raises(conversation.TooManyPins):
        await store.pin(ZOOLOGY, messages[0]["id"], ALICE)
    page, more = await store.get_messages(ZOOLOGY, limit=5, tag=conversation.TAG_PINNED)
    assert [m["seq"] for m in page] == [49, 50, 51, 52, 53][-5:] and more
    older, _ = await store.get_messages(ZOOLOGY, limit=3, before_seq=page[0]["seq"], tag=conversation.TAG_PINNED)
    assert [m["seq"] for m in older] == [page[0]["seq"] - 3, page[0]["seq"] - 2, page[0]["seq"] - 1]
    after, more = await store.get_messages(ZOOLOGY, limit=2, after_seq=0, tag=conversation.TAG_PINNED)
    assert [m["seq"] for m in after] == [4, 5] and more
    unpinned = await store.pin(ZOOLOGY, messages[3]["id"], None)
    assert unpinned is not None and unpinned[1] and unpinned[0]["pinned"] is None
    assert (await store.pin(ZOOLOGY, messages[0]["id"], ALICE)) is not None  # room again


async def test_open_questions_and_question_filters(store: Store) -> None:
    first = await question(store)
    await send(store, BOB, "an answer")
    second = await question(store, BOB, "What is a derivative?")
    answer = await send(store, ALICE, "the slope")
    assert await store.open_questions(ZOOLOGY) == 2
    accepted = await store.set_answer(ZOOLOGY, second["id"], answer["id"])
    assert accepted is not None and accepted[1] and accepted[0]["answer_id"] == answer["id"]
    assert await store.open_questions(ZOOLOGY) == 1
    unanswered, _ = await store.get_messages(ZOOLOGY, limit=10, tag=conversation.TAG_UNANSWERED)
    assert [m["id"] for m in unanswered] == [first["id"]]
    questions, _ = await store.get_messages(ZOOLOGY, limit=10, tag=conversation.TAG_QUESTION)
    assert [m["id"] for m in questions] == [first["id"], second["id"]]
    same = await store.set_answer(ZOOLOGY, second["id"], answer["id"])
    assert same is not None and same[1] is False
    back = await store.set_answer(ZOOLOGY, second["id"], None)
    assert back is not None and back[1] and back[0]["answer_id"] is None
    assert await store.open_questions(ZOOLOGY) == 2
    await store.delete_message(ZOOLOGY, first["id"], ALICE)
    assert await store.open_questions(ZOOLOGY) == 1
    summaries = {s.id: s for s in await store.list_groups(BOB)}
    assert summaries[ZOOLOGY].open_questions == 1


async def test_mention_counts_follow_the_marker_edits_and_deletes(store: Store) -> None:
    async def mention(sender: str, *users: str) -> Message:
        message, _ = await store.add_message(
            ZOOLOGY, sender_id=sender, sender_name="n", content="look", client_msg_id=None, mentions=users
        )
        return message

    first = await mention(BOB, ALICE)
    await mention(ALICE, ALICE, BOB)  # one's own mention of oneself is not news
    third = await mention(DAVE, ALICE, BOB)
    await send(store, BOB, "no mention")
    assert (await store.read_state(ZOOLOGY, ALICE)).mention_count == 2
    assert (await store.read_state(ZOOLOGY, BOB)).mention_count == 2
    await store.edit_message(ZOOLOGY, third["id"], DAVE, "edited: mentions stay")
    assert (await store.read_state(ZOOLOGY, ALICE)).mention_count == 2
    marked = await store.mark_read(ZOOLOGY, ALICE, first["seq"])
    assert (marked.last_read_seq, marked.mention_count) == (first["seq"], 1)
    await store.delete_message(ZOOLOGY, third["id"], DAVE)
    assert (await store.read_state(ZOOLOGY, ALICE)).mention_count == 0
    mine, _ = await store.get_messages(ZOOLOGY, limit=10, tag=conversation.mention_tag(BOB))
    assert [m["sender_id"] for m in mine] == [ALICE]
    summaries = {s.id: s for s in await store.list_groups(BOB)}
    assert summaries[ZOOLOGY].mention_count == 1


async def test_replies_keep_what_they_quote(store: Store) -> None:
    original = await send(store, BOB, "x" * 200)
    snapshot = conversation.reply_snapshot(original)
    reply, _ = await store.add_message(
        ZOOLOGY, sender_id=ALICE, sender_name="n", content="yes", client_msg_id=None, reply_to=snapshot
    )
    assert reply["reply_to"] == {
        "id": original["id"], "seq": original["seq"], "sender_id": BOB, "sender_name": original["sender_name"],
        "excerpt": "x" * 140, "deleted": False,
    }
    assert await store.get_message(ZOOLOGY, reply["id"]) == reply
    await store.delete_message(ZOOLOGY, original["id"], BOB)
    assert (await store.get_message(ZOOLOGY, reply["id"]))["reply_to"]["excerpt"] == "x" * 140  # type: ignore[index]


async def test_a_moderator_deletion_is_recorded(store: Store) -> None:
    message = await send(store, BOB)
    assert await store.delete_message(ZOOLOGY, message["id"], ALICE) is None  # not hers
    deleted = await store.delete_message(ZOOLOGY, message["id"], None, deleted_by=ALICE)
    assert deleted is not None and deleted["deleted"] and deleted["deleted_by"] == ALICE
    assert (await store.get_message(ZOOLOGY, message["id"])) == deleted


# -- Mongo only --


async def test_reactions_from_two_processes_all_land_with_distinct_revs(mongo_uri: str, mongo_db_name: str) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    stores = [MongoStore(mongo_uri, mongo_db_name) for _ in range(2)]
    for one in stores:
        await one.open()
    try:
        message = await send(stores[0], ALICE)
        users = [f"65{i:022x}" for i in range(1, 13)]

        async def react(i: int, user: str) -> None:
            await stores[i % 2].react(ZOOLOGY, message["id"], user, (THUMBS, PARTY)[i % 3 == 0], True)

        await asyncio.gather(*(react(i, user) for i, user in enumerate(users)))
        final = await stores[1].get_message(ZOOLOGY, message["id"])
        assert final is not None
        assert sum(r["count"] for r in final["reactions"]) == len(users)
        assert final["rev"] == message["rev"] + len(users) == await stores[0].latest_rev(ZOOLOGY)
    finally:
        for one in stores:
            await one.close()


async def test_tag_queries_and_counts_are_bounded_index_scans(mongo_uri: str, mongo_db_name: str) -> None:
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    store = MongoStore(mongo_uri, mongo_db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await store.open()
    try:
        for i in range(120):
            kind = "question" if i % 10 == 0 else "message"
            mentions = [BOB] if i % 7 == 0 else []
            await store.add_message(ZOOLOGY, sender_id=ALICE, sender_name="n", content=f"m{i}",
                                    client_msg_id=None, kind=kind, mentions=mentions)
        gid = ObjectId(ZOOLOGY)
        db = client[mongo_db_name]
        page = db.messages.find(tag_filter(gid, conversation.TAG_QUESTION, {"$lt": 100})).sort("seq", -1).limit(6)
        # MongoDB stops the walk at the limit; SecantusDB walks the range (the 10
        # questions below seq 100), never the group's other 110 messages.
        secantus = "secantusVersion" in await client.admin.command("buildInfo")
        _index_scan(await page.explain(), TAGS_INDEX, max_keys=10 if secantus else 7)
        for query, most in (
            (tag_filter(gid, conversation.TAG_UNANSWERED), 13),
            (tag_filter(gid, conversation.mention_tag(BOB), {"$gt": 100}), 4),
        ):
            explained = await db.command("explain", {
                "aggregate": "messages", "cursor": {},
                "pipeline": [{"$match": query}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
            })
            _index_scan(explained, TAGS_INDEX, max_keys=most)
    finally:
        await client.close()
        await store.close()
