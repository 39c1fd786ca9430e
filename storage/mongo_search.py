"""Search on MongoDB without a text index: each message's ``words``
(``storage.search_words``) under the multikey ``(group_id, words, seq)`` index.

A query is read per group through that index alone, in ``seq`` windows from
the newest message down (the first ``FIRST_WINDOW`` seqs wide, each next one
``WINDOW_GROWTH`` times wider) until the windows hold one match more than a
page: each window is the index range of one word (the query's longest exact
word, or the prefix's range when the query is one word) and a ``seq`` range, so
what it reads is the messages holding that word in the window, whatever the
group's size, on servers that cannot stop an index walk at a ``limit`` too. The
query's other words and its prefix are checked on those documents here; a
deleted message has no words. A rare word costs a few windows (five reach back
100,000 messages), a common one its first window. On SecantusDB, whose planner
reads a range of an array field through the index only when nothing else
narrows the query, a one-word query first reads the group's newest messages
through ``(group_id, seq)``, up to ``NEWEST_READ_PER_RESULT`` per result asked
(a common prefix fills its page there), and then, when the page is not full,
every older message holding a word the prefix starts, in one index range (a
prefix too rare to fill a page in the newest messages is held by few).

Messages stored before search existed have no ``words`` until
``WordsBackfill`` gives them theirs (the server runs it at start; it walks the
messages newer than its previous run's start, through ``_id``, so a restart
after a rolling upgrade also indexes what older servers wrote meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import PyMongoError

from .base import Message, StorageUnavailable, now_ms
from .mongo_documents import oid, to_wire
from .search_words import Query, message_words, newest_first, prefix_upper_bound

log = logging.getLogger(__name__)

GROUP_READS_AT_ONCE = 8  # per search over many groups
NEWEST_READ_PER_RESULT = 48  # a lone prefix's walk of the newest messages, per result asked (SecantusDB)
FIRST_WINDOW = 512  # seqs of the first index window; each next one is WINDOW_GROWTH times wider
WINDOW_GROWTH = 4
BACKFILL_BATCH = 500
MARKER = {"_id": "message_words"}
RESCAN_MARGIN = timedelta(hours=1)  # before the previous run's start: clocks and slow writers


def words_field(content: str, deleted: bool = False, attachments: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``words`` to store with a message's content and files (none once deleted)."""
    return {"words": [] if deleted else message_words(content, attachments)}


def _prefix_range(query: Query) -> dict[str, str]:
    return {"$gte": query.prefix, "$lt": prefix_upper_bound(query.prefix)}


def lead_filter(gid: ObjectId, query: Query, low: int, high: int) -> dict[str, Any]:
    """One window of the index: the messages of ``seq`` in ``[low, high)`` that hold the
    query's lead word (the longest exact word; a word the prefix starts when there is none)."""
    words: Any = max(query.exact, key=len) if query.exact else {"$elemMatch": _prefix_range(query)}
    return {"group_id": gid, "words": words, "seq": {"$gte": low, "$lt": high}}


def prefix_filter(gid: ObjectId, query: Query) -> dict[str, Any]:
    """Every message of the group holding a word the prefix starts, for servers whose
    planner reads a range of an array field through an index only when it stands alone
    (SecantusDB: with ``$elemMatch`` or beside a ``seq`` range it scans the collection).
    On an array, the bare range also matches a message with one word above the
    prefix and another below it: the matches are checked again here."""
    return {"group_id": gid, "words": _prefix_range(query)}


def seq_filter(gid: ObjectId, low: int, high: int) -> dict[str, Any]:
    return {"group_id": gid, "seq": {"$gte": low, "$lt": high}}


async def search_group(
    messages: Any, gid: ObjectId, top: int, query: Query, *, limit: int, element_ranges: bool = True
) -> tuple[list[Message], bool]:
    """The newest ``limit`` matches with ``seq <= top``, and whether more exist."""

    def hits(docs: list[dict[str, Any]], below: int) -> list[dict[str, Any]]:
        # The other words and the prefix, checked here (a deleted message has no words).
        found = [d for d in docs if int(d["seq"]) < below and not d.get("deleted")
                 and query.matches(set(d.get("words") or ()))]
        return sorted(found, key=lambda d: -int(d["seq"]))

    found: list[dict[str, Any]] = []
    high, width = top + 1, FIRST_WINDOW
    if query.exact or element_ranges:
        # Index windows of the lead word, from the top down, growing until they hold
        # one match more than a page.
        while high > 1 and len(found) <= limit:
            low = max(1, high - width)
            found.extend(hits(await messages.find(lead_filter(gid, query, low, high)).to_list(None), high))
            high, width = low, width * WINDOW_GROWTH
    else:
        # A prefix alone, where a range of one element cannot bound an index read:
        # the newest messages first (a common prefix fills a page there), then, for
        # a rarer one, every older message holding a word the prefix starts.
        budget = (limit + 1) * NEWEST_READ_PER_RESULT
        while high > 1 and len(found) <= limit and budget > 0:
            low = max(1, high - min(width, budget))
            found.extend(hits(await messages.find(seq_filter(gid, low, high)).to_list(None), high))
            budget -= high - low
            high, width = low, width * WINDOW_GROWTH
        if high > 1 and len(found) <= limit:
            found.extend(hits(await messages.find(prefix_filter(gid, query)).to_list(None), high))
    return [to_wire(d) for d in found[:limit]], len(found) > limit


async def search(
    messages: Any,
    top_seq: Callable[[ObjectId], Awaitable[int]],
    group_ids: Sequence[str],
    query: Query,
    *,
    limit: int,
    before_seq: int | None,
    element_ranges: bool = True,
) -> tuple[list[Message], bool]:
    gate = asyncio.Semaphore(GROUP_READS_AT_ONCE)

    async def one(group_id: str) -> tuple[list[Message], bool]:
        gid = oid(group_id)
        async with gate:
            top = await top_seq(gid)
            if before_seq is not None:
                top = min(top, before_seq - 1)
            return await search_group(messages, gid, top, query, limit=limit, element_ranges=element_ranges)

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
            docs = await self._db.messages.find(query, {"content": 1, "attachments": 1}).sort("_id", ASCENDING).limit(
                BACKFILL_BATCH).to_list(None)
            if not docs:
                break
            # The content read is part of the selector: an edit meanwhile wrote its own words.
            await self._db.messages.bulk_write([
                UpdateOne({"_id": d["_id"], "content": d.get("content"), "words": {"$exists": False}},
                          {"$set": words_field(d.get("content") or "", attachments=d.get("attachments") or ())})
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
