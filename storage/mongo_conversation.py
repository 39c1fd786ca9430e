"""Reactions, pins, accepted answers and the tag queries, on MongoDB.

A change of this kind is a read, a decision in Python (``storage.conversation``)
and one conditional write: the write requires the message's ``rev`` to be the
one read, so a change made meanwhile (on any node) makes it miss, and it is
decided again on the newer state. The write takes the group's next ``rev``
through ``MongoStore.change`` like an edit does, and rewrites the message's
``tags`` (the multikey ``(group_id, tags, seq)`` index the filtered histories
and the counts read) from the state it leaves.

Stored fields: ``reactions: [{emoji, users: [ObjectId]}]`` (every reactor, in
order), ``pinned: {by: ObjectId, at: date} | null``, ``answer_id: ObjectId |
null``, ``reply_to: {id, seq, sender_id, sender_name, excerpt, deleted} | null``
(ids as ObjectIds), ``deleted_by: ObjectId | null``, ``tags: [str]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING

from . import conversation
from .base import Message, StorageUnavailable, now_ms
from .mongo_documents import oid, to_wire

MAX_ATTEMPTS = 50

Change = Callable[[ObjectId, dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any] | None]]
Decide = Callable[[dict[str, Any]], dict[str, Any] | None]


async def modify(messages: Any, change: Change, gid: ObjectId, mid: ObjectId, decide: Decide) -> tuple[Message, bool] | None:
    """Apply what ``decide`` makes of the live message's stored document (``None``:
    nothing to change); the message and whether it changed, ``None`` when there is no
    such live message."""
    for _ in range(MAX_ATTEMPTS):
        doc = await messages.find_one({"_id": mid, "group_id": gid})
        if doc is None or doc.get("deleted"):
            return None
        changes = decide(doc)
        if changes is None:
            return to_wire(doc), False
        changes["tags"] = conversation.tags(to_wire({**doc, **changes}))
        selector = {"_id": mid, "group_id": gid, "deleted": False, "rev": doc.get("rev")}
        updated = await change(gid, selector, changes)
        if updated is not None:
            return to_wire(updated), True
    raise StorageUnavailable(f"message {mid} kept changing under {MAX_ATTEMPTS} attempts")


def reaction_change(user_id: str, emoji: str, on: bool) -> Decide:
    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        stored = [(r["emoji"], [str(u) for u in r["users"]]) for r in doc.get("reactions") or ()]
        reactions = conversation.react(stored, user_id, emoji, on)
        if reactions is None:
            return None
        return {"reactions": [{"emoji": e, "users": [ObjectId(u) for u in users]} for e, users in reactions]}

    return decide


async def pin_change(messages: Any, gid: ObjectId, by: str | None) -> Decide:
    """The pin (or unpin) decision; the group's pinned messages are counted first
    (across nodes two last pins at once may both pass: the limit is a soft one there)."""
    full = by is not None and await messages.count_documents(
        {"group_id": gid, "tags": conversation.TAG_PINNED}
    ) >= conversation.MAX_PINNED_PER_GROUP

    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        if (doc.get("pinned") is not None) == (by is not None):
            return None
        if full:
            raise conversation.TooManyPins
        return {"pinned": None if by is None else {"by": oid(by), "at": now_ms()}}

    return decide


def answer_change(answer_id: str | None) -> Decide:
    wanted = None if answer_id is None else oid(answer_id)

    def decide(doc: dict[str, Any]) -> dict[str, Any] | None:
        return None if doc.get("answer_id") == wanted else {"answer_id": wanted}

    return decide


def tag_filter(gid: ObjectId, tag: str, seqs: dict[str, int] | None = None) -> dict[str, Any]:
    query: dict[str, Any] = {"group_id": gid, "tags": tag}
    if seqs:
        query["seq"] = seqs
    return query


async def tagged_page(
    messages: Any, gid: ObjectId, tag: str, limit: int, before_seq: int | None, after_seq: int | None
) -> tuple[list[Message], bool]:
    """``get_messages`` over the messages tagged ``tag``: one walk of ``(group_id, tags, seq)``."""
    if after_seq is not None:
        cursor = messages.find(tag_filter(gid, tag, {"$gt": after_seq})).sort("seq", ASCENDING)
        docs = await cursor.limit(limit + 1).to_list(None)
        return [to_wire(d) for d in docs[:limit]], len(docs) > limit
    bound = None if before_seq is None else {"$lt": before_seq}
    cursor = messages.find(tag_filter(gid, tag, bound)).sort("seq", DESCENDING)
    docs = await cursor.limit(limit + 1).to_list(None)
    return [to_wire(d) for d in reversed(docs[:limit])], len(docs) > limit


async def count_tagged(messages: Any, gid: ObjectId, tag: str, above_seq: int = 0) -> int:
    bound = {"$gt": above_seq} if above_seq else None
    return int(await messages.count_documents(tag_filter(gid, tag, bound)))


def stored_reply(reply_to: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reply snapshot (wire form) as stored: ids as ObjectIds."""
    if reply_to is None:
        return None
    sender = reply_to["sender_id"]
    return {**reply_to, "id": oid(reply_to["id"]), "sender_id": None if sender is None else oid(sender)}
