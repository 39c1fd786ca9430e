"""The documents ``MongoStore`` keeps: their indexes, ids, filters and the wire form.

The collections' shapes are described in ``storage.mongo``; what reads or
writes those documents from another module (the legacy and revision
migrations, the outbox, tests) takes its index names and conversions from here.
"""

from __future__ import annotations

from typing import Any

from bson import Decimal128, ObjectId, Timestamp
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidId
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from .base import Message, iso_timestamp
from .conversation import reactions_to_wire

SEQ_INDEX = "group_seq"
REVS_INDEX = "group_revs"
REV_INDEX = "group_rev"
CLIENT_MSG_INDEX = "group_sender_client_msg"
LIVE_INDEX = "group_deleted_seq"
OWN_LIVE_INDEX = "group_sender_deleted_seq"
MARKER_INDEX = "user_group"
TAGS_INDEX = "group_tags_seq"
WORDS_INDEX = "group_words_seq"

MESSAGE_INDEXES = [
    IndexModel([("group_id", ASCENDING), ("seq", ASCENDING)], name=SEQ_INDEX, unique=True),
    # Every revision a message took. Partial: messages stored before revisions
    # have no `revs` and must not collide on a missing value.
    IndexModel(
        [("group_id", ASCENDING), ("revs", ASCENDING)],
        name=REVS_INDEX,
        unique=True,
        partialFilterExpression={"revs": {"$gt": 0}},
    ),
    IndexModel([("group_id", ASCENDING), ("rev", ASCENDING)], name=REV_INDEX),
    # `$gt: ""` is "a non-empty string" (comparisons are type-bracketed) and is
    # what SecantusDB can prove a `client_msg_id: "x"` query implies; with
    # `$type: "string"` it scans the collection instead.
    IndexModel(
        [("group_id", ASCENDING), ("sender_id", ASCENDING), ("client_msg_id", ASCENDING)],
        name=CLIENT_MSG_INDEX,
        unique=True,
        partialFilterExpression={"client_msg_id": {"$gt": ""}},
    ),
    # Unread counts: live messages above a marker, minus the reader's own.
    IndexModel(
        [("group_id", ASCENDING), ("deleted", ASCENDING), ("seq", ASCENDING)], name=LIVE_INDEX
    ),
    IndexModel(
        [
            ("group_id", ASCENDING),
            ("sender_id", ASCENDING),
            ("deleted", ASCENDING),
            ("seq", ASCENDING),
        ],
        name=OWN_LIVE_INDEX,
    ),
    # Filtered histories and the mention and open-question counts (storage.mongo_conversation).
    # Partial: most messages have no tags, and their writes then skip this index.
    IndexModel(
        [("group_id", ASCENDING), ("tags", ASCENDING), ("seq", ASCENDING)],
        name=TAGS_INDEX,
        partialFilterExpression={"tags": {"$gt": ""}},
    ),
    # Search (storage.mongo_search): a key per distinct word of each live message.
    IndexModel([("group_id", ASCENDING), ("words", ASCENDING), ("seq", ASCENDING)], name=WORDS_INDEX),
]
MARKER_INDEXES = [
    # user first: one query reads all of a user's markers for `list_groups`.
    IndexModel([("user_id", ASCENDING), ("group_id", ASCENDING)], name=MARKER_INDEX, unique=True),
]


def to_wire(doc: dict[str, Any]) -> Message:
    """A stored message as the wire dict: hex ids, ISO times."""
    sender_id = doc.get("sender_id")
    sid = None if sender_id is None else str(sender_id).lower()
    sender = doc.get("sender") or sid or ""
    edited = doc.get("edited_at")
    deleted = bool(doc.get("deleted", False))
    pinned = doc.get("pinned")
    return {
        "type": "message",
        "kind": doc.get("kind") or "message",
        "id": str(doc["_id"]),
        "seq": int(doc["seq"]),
        "rev": int(doc.get("rev") or 0),
        "group_id": str(doc["group_id"]),
        "sender_id": sid,
        "sender": sender,
        "sender_name": sender,
        "content": "" if deleted else doc.get("content", ""),
        "timestamp": iso_timestamp(doc["timestamp"]),
        "client_msg_id": doc.get("client_msg_id"),
        "edited_at": None if edited is None else iso_timestamp(edited),
        "deleted": deleted,
        "mentions": [] if deleted else [str(user_id) for user_id in doc.get("mentions") or ()],
        "reply_to": _reply_to_wire(doc.get("reply_to")),
        "reactions": [] if deleted else reactions_to_wire(
            (r["emoji"], [str(u) for u in r["users"]]) for r in doc.get("reactions") or ()
        ),
        "pinned": None if deleted or not pinned else {"by": str(pinned["by"]), "at": iso_timestamp(pinned["at"])},
        "answer_id": _hex_or_none(doc.get("answer_id")),
        "attachments": [] if deleted else [dict(a) for a in doc.get("attachments") or ()],
        "deleted_by": _hex_or_none(doc.get("deleted_by")),
    }


def _hex_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _reply_to_wire(reply: dict[str, Any] | None) -> dict[str, Any] | None:
    if not reply:
        return None
    return {**reply, "id": str(reply["id"]), "sender_id": _hex_or_none(reply.get("sender_id"))}


def client_msg_filter(gid: ObjectId, sid: ObjectId | None, client_msg_id: str) -> dict[str, Any]:
    return {"group_id": gid, "sender_id": sid, "client_msg_id": client_msg_id}


def live_message_filter(mid: ObjectId, gid: ObjectId, sid: ObjectId) -> dict[str, Any]:
    """The message, if it is in the group, the sender's and not deleted: a point lookup."""
    return {"_id": mid, "group_id": gid, "sender_id": sid, "deleted": False}


def duplicate_index(exc: DuplicateKeyError) -> str | None:
    """Which unique index refused the insert."""
    details = exc.details or {}
    pattern = details.get("keyPattern") or {}
    if "client_msg_id" in pattern:
        return CLIENT_MSG_INDEX
    if "revs" in pattern:
        return REVS_INDEX
    if "seq" in pattern:
        return SEQ_INDEX
    message = str(details.get("errmsg") or exc)
    for name in (CLIENT_MSG_INDEX, REVS_INDEX, SEQ_INDEX):
        if f"index: {name} " in message:
            return name
    return None


def plain(value: Any) -> Any:
    """A legacy field without BSON-only types (dates Python cannot hold become None)."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Decimal128):
        try:
            return float(value.to_decimal())
        except ValueError:  # a signalling NaN
            return None
    if isinstance(value, Timestamp):
        return value.as_datetime()
    return None if isinstance(value, DatetimeMS) else value


def oid(value: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError) as exc:
        raise ValueError(f"not an ObjectId: {value!r}") from exc


def oid_or_none(value: str) -> ObjectId | None:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


def group_name(group: dict[str, Any]) -> str:
    name = group.get("name")
    return name if isinstance(name, str) else ""
