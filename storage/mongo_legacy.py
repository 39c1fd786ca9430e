"""The MongoDB store as ``migrate-legacy-chat`` needs it: reading the older
embedded ``study_groups.chat`` arrays and writing migrated messages.

``migrate-legacy-chat`` reads the arrays without loading them whole (an
``$unwind`` cursor, then records fetched by array index in chunks) and writes
migrated messages in the store's shape plus ``legacy: {index: <array index>}``.
A unique partial index on ``(group_id, legacy.index)``, created by the
migration only, makes every record land at most once.
``add_migrated_messages`` numbers them by the store's rule (under the same
per-group lock, with the same retry), one ordered ``insert_many`` per batch: an
ordered insert stores its documents one after another, so a number is still
only taken above one already stored. The server itself never uses this module.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import CodecOptions, DatetimeConversion, ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError

from .base import StorageUnavailable, User, display_name
from .mongo import MAX_INSERT_ATTEMPTS, MongoStore, _unavailable
from .mongo_documents import REVS_INDEX, SEQ_INDEX, group_name, oid, oid_or_none, plain
from .mongo_search import words_field

LEGACY_INDEX = "group_legacy_index"
LEGACY_CURSOR_BATCH = 5000

# Created by `migrate-legacy-chat` only: the server never needs it. Queries
# repeat the filter's `$gte: 0` so that SecantusDB sees they may use it.
LEGACY_INDEXES = [
    IndexModel(
        [("group_id", ASCENDING), ("legacy.index", ASCENDING)],
        name=LEGACY_INDEX,
        unique=True,
        partialFilterExpression={"legacy.index": {"$gte": 0}},
    ),
]
# Old data may hold dates Python cannot represent, or invalid UTF-8: decode
# both instead of failing the whole batch (out-of-range dates become None).
LEGACY_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="replace",
)


@dataclass(frozen=True, slots=True)
class LegacyGroup:
    """A group as the migration sees it: ``chat`` is the BSON type of the field."""

    id: str
    name: str
    chat: str  # "array", "missing", or another type name
    length: int


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """One legacy record, checked and ready to store."""

    legacy_index: int
    sender_id: str | None
    sender_name: str
    content: str
    timestamp: datetime


class LegacyMongoStore(MongoStore):
    """``MongoStore`` plus what the migration reads and writes."""

    @_unavailable
    async def ensure_legacy_index(self) -> None:
        await self._messages.create_indexes(LEGACY_INDEXES)

    @_unavailable
    async def legacy_groups(self, group_id: str | None = None) -> list[LegacyGroup]:
        """Groups holding a ``chat`` field (or just ``group_id``, whatever it holds), by id."""
        match: dict[str, Any] = {"chat": {"$exists": True}}
        if group_id is not None:
            match = {"_id": oid(group_id)}
        pipeline = [
            {"$match": match},
            {"$sort": {"_id": 1}},
            {"$project": {
                "name": 1,
                "chat": {"$type": "$chat"},
                "length": {"$cond": [{"$isArray": "$chat"}, {"$size": "$chat"}, 0]},
            }},
        ]
        docs = await (await self._legacy_groups.aggregate(pipeline)).to_list(None)
        return [LegacyGroup(str(d["_id"]), group_name(d), str(d["chat"]), int(d["length"])) for d in docs]

    async def legacy_timestamps(self, group_id: str) -> AsyncIterator[tuple[int, Any]]:
        """``(array index, raw timestamp)`` of every record in array order, streamed."""
        pipeline = [
            {"$match": {"_id": oid(group_id)}},
            {"$unwind": {"path": "$chat", "includeArrayIndex": "index"}},
            {"$project": {"_id": 0, "index": 1, "ts": "$chat.timestamp"}},
        ]
        cursor = self._legacy_groups.aggregate(pipeline, batchSize=LEGACY_CURSOR_BATCH)
        async for doc in self._streamed(cursor):
            if isinstance(doc.get("index"), int):
                yield int(doc["index"]), plain(doc.get("ts"))

    @_unavailable
    async def legacy_records(self, group_id: str, indexes: Sequence[int]) -> list[Any]:
        """The records at ``indexes`` of the group's array (None past its end).

        Documents come back with ObjectIds as hex strings, Decimal128 as float,
        BSON timestamps as datetimes and out-of-range dates as None.
        """
        if not indexes:
            return []
        pipeline = [
            {"$match": {"_id": oid(group_id)}},
            {"$project": {"_id": 0, "records": {"$map": {
                "input": [int(i) for i in indexes],
                "as": "i",
                "in": {"$arrayElemAt": ["$chat", "$$i"]},
            }}}},
        ]
        docs = await (await self._legacy_groups.aggregate(pipeline)).to_list(None)
        records = list(docs[0].get("records") or []) if docs else []
        records += [None] * (len(indexes) - len(records))
        return [
            {k: plain(v) for k, v in r.items()} if isinstance(r, Mapping) else plain(r)
            for r in records
        ]

    async def legacy_indexes(self, group_id: str) -> AsyncIterator[int]:
        """The array indexes of the group's migrated messages, streamed.

        One walk of the legacy index: on SecantusDB a ``$in`` of many indexes
        costs milliseconds per value, a range walk does not.
        """
        cursor = self._messages.find(
            {"group_id": oid(group_id), "legacy.index": {"$gte": 0}},
            {"_id": 0, "legacy.index": 1},
            batch_size=LEGACY_CURSOR_BATCH,
        )
        async for doc in self._streamed(cursor):
            yield int(doc["legacy"]["index"])

    @_unavailable
    async def get_users(self, user_ids: Iterable[str]) -> dict[str, User]:
        """The users among ``user_ids`` that have a ``users`` document, by lowercase id."""
        oids = {uid for uid in map(oid_or_none, user_ids) if uid is not None}
        if not oids:
            return {}
        cursor = self._db.users.find({"_id": {"$in": list(oids)}}, {"full_name": 1, "last_name": 1})
        return {str(d["_id"]): User(str(d["_id"]), display_name(d, str(d["_id"]))) async for d in cursor}

    @_unavailable
    async def add_migrated_messages(
        self, group_id: str, messages: Sequence[LegacyMessage]
    ) -> tuple[int, list[int]]:
        """Store legacy messages, in this order, with the group's next seqs and revs.

        ``add_message``'s numbering (top + 1, the unique index arbitrates, retry
        above the winner) applied to an ordered batch. Returns how many were
        stored and the legacy indexes that already had a message (another run).
        """
        gid = oid(group_id)
        pending = [_legacy_doc(gid, m) for m in messages]
        stored, present, stalled = 0, [], 0
        async with self._writer(str(gid)):
            while pending:
                top, top_rev = await self._top_seq(gid), await self._top_rev(gid)
                for offset, doc in enumerate(pending, start=1):
                    doc.update(seq=top + offset, rev=top_rev + offset, revs=[top_rev + offset])
                try:
                    await self._messages.insert_many(pending, ordered=True)
                    done, error = len(pending), None
                except BulkWriteError as exc:
                    done = int(exc.details.get("nInserted", 0))
                    error = (exc.details.get("writeErrors") or [{}])[0]
                stored += done
                self._remember_seq(gid, top + done)
                self._revs.remember(gid, top_rev + done)
                if error is None:
                    break
                index = _write_error_index(error) if error.get("code") == 11000 else None
                if index == LEGACY_INDEX:
                    present.append(int(pending[done]["legacy"]["index"]))
                    pending = pending[done + 1:]
                elif index in (SEQ_INDEX, REVS_INDEX):
                    # Another writer took this seq (or rev): it is stored, so start above it.
                    if index == SEQ_INDEX:
                        self._remember_seq(gid, top + done + 1)
                    else:
                        self._revs.remember(gid, top_rev + done + 1)
                    pending = pending[done:]
                    stalled = 0 if done else stalled + 1
                    if stalled >= MAX_INSERT_ATTEMPTS:
                        raise StorageUnavailable(f"no free seq after {MAX_INSERT_ATTEMPTS} attempts")
                    if stalled >= 2:
                        await asyncio.sleep(random.uniform(0, 0.001 * min(stalled, 20)))
                else:
                    raise StorageUnavailable(f"migrated message refused: {error.get('errmsg')}")
        return stored, present

    @property
    def _legacy_groups(self) -> Any:
        return self._db.get_collection("study_groups", codec_options=LEGACY_CODEC)


def _legacy_doc(gid: ObjectId, message: LegacyMessage) -> dict[str, Any]:
    """A migrated message: the stored shape, plus where in the array it came from."""
    return {
        "_id": ObjectId(),
        "group_id": gid,
        "sender_id": None if message.sender_id is None else oid(message.sender_id),
        "sender": message.sender_name,
        "content": message.content,
        "timestamp": message.timestamp,
        "client_msg_id": None,
        "edited_at": None,
        "deleted": False,
        **words_field(message.content),
        "legacy": {"index": message.legacy_index},
    }


def _write_error_index(error: Mapping[str, Any]) -> str | None:
    """Which unique index refused one write of a bulk insert."""
    pattern = error.get("keyPattern") or {}
    if "legacy.index" in pattern:
        return LEGACY_INDEX
    if "revs" in pattern:
        return REVS_INDEX
    if "seq" in pattern:
        return SEQ_INDEX
    message = str(error.get("errmsg") or "")
    for name in (LEGACY_INDEX, REVS_INDEX, SEQ_INDEX):
        if f"index: {name} " in message:
            return name
    return None
