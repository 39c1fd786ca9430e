"""Search on MongoDB without a text index: each message's ``words``
(``storage.search_words``) under the multikey ``(group_id, words, seq)`` index.

A query is one index read per group. With an exact word, the index is read at
that word (the longest of them: usually the rarest) from ``before_seq`` down,
already in ``seq`` order, so the read stops after ``limit + 1`` matches; the
other words and the prefix are checked on the documents it reaches. A query of
one word is a prefix only: the index is read over every word the prefix starts
and the matches are sorted, so its cost grows with how many messages hold such
a word (see ``bench/results``).

Messages stored before search existed have no ``words`` until
``WordsBackfill`` gives them theirs (the server runs it at start; it walks the
messages newer than its previous run's start, through ``_id``, so a restart
after a rolling upgrade also indexes what older servers wrote meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import PyMongoError

from .base import Message, StorageUnavailable, now_ms
from .mongo_documents import WORDS_INDEX, oid, to_wire
from .search_words import Query, message_words, newest_first, prefix_upper_bound

log = logging.getLogger(__name__)

GROUP_READS_AT_ONCE = 8  # per search over many groups
BACKFILL_BATCH = 500
MARKER = {"_id": "message_words"}
RESCAN_MARGIN = timedelta(hours=1)  # before the previous run's start: clocks and slow writers


def words_field(content: str, deleted: bool = False) -> dict[str, Any]:
    """The ``words`` to store with a message's content (none once deleted)."""
    return {"words": [] if deleted else message_words(content)}


def _filter(gid: ObjectId, query: Query, before_seq: int | None) -> dict[str, Any]:
    prefix = {"$elemMatch": {"$gte": query.prefix, "$lt": prefix_upper_bound(query.prefix)}}
    selector: dict[str, Any] = {"group_id": gid}
    if query.exact:
        lead = max(query.exact, key=len)
        selector["words"] = lead
        rest: list[dict[str, Any]] = [{"words": w} for w in query.exact if w != lead]
        selector["$and"] = [*rest, {"words": prefix}]
    else:
        selector["words"] = prefix
    if before_seq is not None:
        selector["seq"] = {"$lt": before_seq}
    selector["deleted"] = False
    return selector


def query_cursor(messages: Any, group_id: str, query: Query, *, limit: int, before_seq: int | None = None) -> Any:
    """The read of one group's newest ``limit`` matches and one more (``.explain()`` shows its plan)."""
    return (
        messages.find(_filter(oid(group_id), query, before_seq))
        .sort("seq", DESCENDING)
        .limit(limit + 1)
        .hint(WORDS_INDEX)
    )


async def search(
    messages: Any, group_ids: Sequence[str], query: Query, *, limit: int, before_seq: int | None
) -> tuple[list[Message], bool]:
    gate = asyncio.Semaphore(GROUP_READS_AT_ONCE)

    async def one(group_id: str) -> tuple[list[Message], bool]:
        async with gate:
            docs = await query_cursor(messages, group_id, query, limit=limit, before_seq=before_seq).to_list(None)
        return [to_wire(d) for d in docs[:limit]], len(docs) > limit

    return newest_first(list(await asyncio.gather(*(one(g) for g in group_ids))), limit)


class WordsBackfill:
    """Gives ``words`` to the live messages stored without them."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def run(self) -> int:
        started = now_ms()
        marker = await self._db.schema_migrations.find_one(MARKER)
        since = marker.get("since") if marker else None
        query: dict[str, Any] = {"words": {"$exists": False}, "deleted": False}
        if since is not None:
            query["_id"] = {"$gte": ObjectId.from_datetime(since - RESCAN_MARGIN)}
        done = 0
        while True:
            docs = await self._db.messages.find(query, {"content": 1}).sort("_id", ASCENDING).limit(
                BACKFILL_BATCH).to_list(None)
            if not docs:
                break
            # The content read is part of the selector: an edit meanwhile wrote its own words.
            await self._db.messages.bulk_write([
                UpdateOne({"_id": d["_id"], "content": d.get("content"), "words": {"$exists": False}},
                          {"$set": words_field(d.get("content") or "")})
                for d in docs
            ], ordered=False)
            done += len(docs)
            query["_id"] = {"$gt": docs[-1]["_id"]}
            await asyncio.sleep(0.01)  # room for live writes
        await self._db.schema_migrations.update_one(MARKER, {"$set": {"since": started}}, upsert=True)
        return done


async def backfill_in_background(db: Any) -> None:
    """The server's run at start."""
    try:
        done = await WordsBackfill(db).run()
        if done:
            log.info("search words given to %d older messages", done)
    except (PyMongoError, StorageUnavailable) as exc:
        log.warning("older messages could not get search words yet (%s); the next start tries again", exc)
