"""Unread counts and open questions on the MongoDB store cost the same however many
messages of the group are deleted or questions: after a process's first count in a
group, it reads only what changed since (``storage.mongo_tally``), and stays exact
when other processes delete, ask and answer meanwhile.

Against SecantusDB (or ``MONGODB_URI``); the keys each command walks come from the
server's own ``explain`` of the commands the store sent, seen through pymongo's
command monitoring.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from storage import mongo_tally
from storage.base import Message
from storage.mongo import MongoStore
from tests.support.mongo import seed_mongo

ANA = "65aaaaaaaaaaaaaaaaaaaa01"
BEN = "65bbbbbbbbbbbbbbbbbbbb02"
READER = "65cccccccccccccccccccc03"  # reads nothing, writes nothing
GROUP = "65f0000000000000000000a1"
USERS = [(ANA, "Ana", None), (BEN, "Ben", None), (READER, "Rui", None)]
GROUPS = [(GROUP, "Optics", [ANA, BEN, READER])]
MESSAGES = 400
DELETED_EVERY = 5  # 80 deleted
QUESTIONS_EVERY = 8  # 50 questions, 10 of them deleted


class _Sent(monitoring.CommandListener):
    """The read commands sent to one database while ``recording``."""

    def __init__(self) -> None:
        self.database = ""
        self.recording = False
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.database_name == self.database and event.command_name in ("find", "aggregate"):
            self.commands.append({k: v for k, v in event.command.items()
                                  if not k.startswith("$") and k not in ("lsid", "txnNumber", "readConcern")})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


SENT = _Sent()
monitoring.register(SENT)  # pymongo keeps listeners for good: one for the module


def _keys(explained: Any) -> int:
    """Index keys an ``explain`` says were walked (every ``totalKeysExamined`` in it)."""
    if isinstance(explained, dict):
        own = explained.get("totalKeysExamined")
        return (own if isinstance(own, int) else 0) + sum(_keys(v) for v in explained.values())
    if isinstance(explained, list):
        return sum(_keys(v) for v in explained)
    return 0


@pytest.fixture
async def stores(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    """Two stores on one database: two server processes' views."""
    await seed_mongo(mongo_uri, mongo_db_name, USERS, GROUPS)
    one, other = MongoStore(mongo_uri, mongo_db_name), MongoStore(mongo_uri, mongo_db_name)
    await one.open()
    await other.open()
    try:
        yield one, other
    finally:
        await one.close()
        await other.close()


async def _fill(store: MongoStore) -> list[Message]:
    sends = [
        {"sender_id": (ANA, BEN)[i % 2], "sender_name": "x", "content": f"m{i}", "client_msg_id": None,
         "kind": "question" if i % QUESTIONS_EVERY == 0 else "message"}
        for i in range(1, MESSAGES + 1)
    ]
    stored: list[Message] = []
    for start in range(0, MESSAGES, 100):
        answers = await store.add_messages(GROUP, sends[start:start + 100])  # type: ignore[arg-type]
        for answer in answers:
            assert not isinstance(answer, BaseException), answer
            stored.append(answer[0])
    for message in stored[DELETED_EVERY - 1::DELETED_EVERY]:
        assert await store.delete_message(GROUP, message["id"], message["sender_id"]) is not None
    return stored


def _expected(stored: list[Message], deleted: set[int], answered: set[int]) -> tuple[int, int]:
    unread = sum(1 for m in stored if m["seq"] not in deleted)
    open_questions = sum(1 for m in stored if m["kind"] == "question" and m["seq"] not in deleted | answered)
    return unread, open_questions


async def _counts(store: MongoStore) -> tuple[int, int]:
    read = await store.read_state(GROUP, READER)
    return read.unread_count, await store.open_questions(GROUP)


async def test_counts_after_the_first_walk_no_deleted_message_or_question_again(
    stores: tuple[MongoStore, MongoStore], mongo_uri: str, mongo_db_name: str
) -> None:
    one, _ = stores
    stored = await _fill(one)
    deleted = {m["seq"] for m in stored[DELETED_EVERY - 1::DELETED_EVERY]}
    assert await _counts(one) == _expected(stored, deleted, set())  # the first: walks them once
    SENT.database, SENT.commands = mongo_db_name, []
    SENT.recording = True
    try:
        assert await _counts(one) == _expected(stored, deleted, set())
    finally:
        SENT.recording = False
    assert SENT.commands, "the counts read nothing at all"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        walked = [_keys(await client[mongo_db_name].command("explain", command)) for command in SENT.commands]
    finally:
        await client.close()
    # 80 deleted and 40 open questions: walking either would be dozens of keys.
    assert sum(walked) <= 10, list(zip(walked, SENT.commands, strict=True))


async def test_counts_stay_exact_while_another_process_deletes_asks_and_answers(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    one, other = stores
    stored = await _fill(other)
    deleted = {m["seq"] for m in stored[DELETED_EVERY - 1::DELETED_EVERY]}
    answered: set[int] = set()
    assert await _counts(one) == _expected(stored, deleted, answered)
    questions = [m for m in stored if m["kind"] == "question" and m["seq"] not in deleted]
    # Through the other store: one process's counts learn of another's changes.
    answer = stored[1]
    for question in questions[:5]:
        assert await other.set_answer(GROUP, question["id"], answer["id"]) is not None
        answered.add(question["seq"])
    assert await other.set_answer(GROUP, questions[0]["id"], None) is not None  # reopened
    answered.discard(questions[0]["seq"])
    victim = next(m for m in stored if m["seq"] not in deleted and m["kind"] == "question")
    assert await other.delete_message(GROUP, victim["id"], victim["sender_id"]) is not None
    deleted.add(victim["seq"])
    asked, _ = await other.add_message(GROUP, sender_id=ANA, sender_name="Ana", content="why?",
                                       client_msg_id=None, kind="question")
    stored.append(asked)
    edited = stored[2]
    assert await other.edit_message(GROUP, edited["id"], edited["sender_id"], "edited") is not None
    assert await _counts(one) == _expected(stored, deleted, answered)
    # Counted many at once while deletions land: each count is exact for some moment,
    # and once they stop every count is exact.
    more = [m for m in stored if m["seq"] not in deleted][:20]

    async def delete_all() -> None:
        for message in more:
            # Counted as deleted from the moment a count may see it so (the lower bound below).
            deleted.add(message["seq"])
            assert await other.delete_message(GROUP, message["id"], message["sender_id"]) is not None

    deleting = asyncio.create_task(delete_all())
    while not deleting.done():
        unread = [c[0] for c in await asyncio.gather(*(_counts(one) for _ in range(5)))]
        assert all(_expected(stored, deleted, answered)[0] <= u <= len(stored) for u in unread), unread
    await deleting
    assert await _counts(one) == _expected(stored, deleted, answered)


async def test_a_count_made_during_a_catch_up_sees_the_lists_as_they_were_or_as_they_become(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    """A count that needs no newer revision than the lists hold is answered from them at once,
    even while another count is bringing them up to date; it must see them before or after
    that catch-up, never half applied (a number of open questions that was never true)."""
    one, other = stores
    stored = await _fill(other)
    deleted = {m["seq"] for m in stored[DELETED_EVERY - 1::DELETED_EVERY]}
    before = _expected(stored, deleted, set())[1]
    assert await one.open_questions(GROUP) == before
    held = await one.latest_rev(GROUP)  # the revision the lists hold now
    # More changes than a cursor's first batch (101 documents), too few to load again.
    asked = 300
    for _ in range(asked // 100):
        answers = await other.add_messages(GROUP, [  # type: ignore[misc]
            {"sender_id": ANA, "sender_name": "Ana", "content": "why?", "client_msg_id": None, "kind": "question"}
            for _ in range(100)
        ])
        assert all(not isinstance(a, BaseException) for a in answers), answers
    gid = ObjectId(GROUP)
    catching_up = asyncio.create_task(one.open_questions(GROUP))
    seen = set()
    while not catching_up.done():
        seen.add(await one._tally.unanswered(one._messages, gid, top=held))
        await asyncio.sleep(0)
    assert await catching_up == before + asked
    assert seen <= {before, before + asked}, sorted(seen)


async def test_a_process_far_behind_loads_the_group_again_and_stays_exact(
    stores: tuple[MongoStore, MongoStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_tally, "CATCH_UP_MOST", 10)
    one, other = stores
    stored = await _fill(other)
    deleted = {m["seq"] for m in stored[DELETED_EVERY - 1::DELETED_EVERY]}
    assert await _counts(one) == _expected(stored, deleted, set())
    # More changes than the lists hold and CATCH_UP_MOST: loaded again, not walked.
    for message in [m for m in stored if m["seq"] not in deleted][:100]:
        assert await other.delete_message(GROUP, message["id"], message["sender_id"]) is not None
        deleted.add(message["seq"])
    assert await _counts(one) == _expected(stored, deleted, set())
    # A marker in the middle: deleted messages below it are not subtracted.
    await one.mark_read(GROUP, READER, 200)
    read = await one.read_state(GROUP, READER)
    assert read.unread_count == sum(1 for m in stored if m["seq"] > 200 and m["seq"] not in deleted)


async def test_a_delete_that_takes_no_revision_is_counted_once_the_lists_are_reloaded(
    stores: tuple[MongoStore, MongoStore], monkeypatch: pytest.MonkeyPatch, mongo_uri: str, mongo_db_name: str
) -> None:
    """A server of a version before revisions, during a rolling upgrade, deletes without
    taking a revision: no catch-up walks that change, the periodic reload counts it."""
    monkeypatch.setattr(mongo_tally, "RELOAD_AFTER_S", 0.5)
    one, _ = stores
    stored = await _fill(one)
    deleted = {m["seq"] for m in stored[DELETED_EVERY - 1::DELETED_EVERY]}
    assert await _counts(one) == _expected(stored, deleted, set())
    question = next(m for m in stored if m["kind"] == "question" and m["seq"] not in deleted)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        await client[mongo_db_name].messages.update_one(
            {"seq": question["seq"]}, {"$set": {"deleted": True, "content": "", "tags": []}})
    finally:
        await client.close()
    deleted.add(question["seq"])
    await asyncio.sleep(0.6)
    assert await _counts(one) == _expected(stored, deleted, set())
