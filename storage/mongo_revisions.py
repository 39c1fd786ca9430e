"""Revisions for messages stored before revisions existed (``migrate-revisions``).

A message without ``rev`` is left out of ``get_changes`` until it has one.
``RevisionBackfill`` gives every such message, group by group in ``seq``
order, the group's next ``rev``, through the same write path as an edit
(``MongoStore.change``: the unique ``revs`` index arbitrates, and the
store's per-group lock orders it with this process's writers), so it runs
while servers serve the group: a message that a live edit reaches first
already has its revision and is skipped. It only ever touches messages that
have no ``rev``, so a run can be stopped at any point and run again; a
finished run is recorded in ``schema_migrations`` and the server's own run at
start skips everything then (``migrate-revisions`` always walks every group,
for messages written by servers of an older version during a rolling
upgrade).

Cost: per group, one lookup through ``(group_id, rev)`` tells whether any
message lacks a revision; a group that has some is walked in ``seq`` windows
of ``WINDOW`` (bounded index scans) and written one message at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from .base import StorageUnavailable
from .mongo import MongoStore
from .mongo_documents import oid

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW = 500
MARKER = {"_id": "message_revisions"}
UNREVISED = {"$in": [None]}  # no `rev` field (or null)


@dataclass
class BackfillResult:
    groups: int = 0  # groups that had messages without a revision
    assigned: int = 0  # revisions given


class RevisionBackfill:
    """Gives revisions to messages stored without one, through an open ``MongoStore``
    (the server's own, so its writers and this share one lock per group)."""

    def __init__(self, store: MongoStore) -> None:
        self.store = store

    @property
    def _db(self) -> Any:
        return self.store.database

    async def finished(self) -> bool:
        """Whether a run has completed on this database."""
        return await self._read(self._db.schema_migrations.find_one({**MARKER, "done": True})) is not None

    async def groups_with_messages(self) -> list[ObjectId]:
        return sorted(await self._read(self._db.messages.distinct("group_id")))

    async def unrevised_count(self, gid: ObjectId) -> int:
        return int(await self._read(self._db.messages.count_documents({"group_id": gid, "rev": UNREVISED})))

    async def _read(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {exc}") from exc

    async def run(
        self,
        *,
        group: str | None = None,
        dry_run: bool = False,
        report: Callable[[str], Any] = log.info,
    ) -> BackfillResult:
        """Give a revision to every message that has none (in one group, or all)."""
        result = BackfillResult()
        gids = [oid(group)] if group is not None else await self.groups_with_messages()
        for gid in gids:
            missing = await self.unrevised_count(gid)
            if not missing:
                continue
            result.groups += 1
            if dry_run:
                result.assigned += missing
                report(f"group {gid}: {missing} messages would get a revision")
                continue
            done = await self._backfill_group(gid)
            result.assigned += done
            report(f"group {gid}: {done} messages got a revision")
        if group is None and not dry_run:
            await self._mark_finished()
        return result

    async def _backfill_group(self, gid: ObjectId) -> int:
        done, above = 0, 0
        top = await self.store.latest_seq(str(gid))
        while above < top:
            upto = above + WINDOW
            query = {"group_id": gid, "seq": {"$gt": above, "$lte": upto}, "rev": UNREVISED}
            cursor = self._db.messages.find(query, {"_id": 1, "seq": 1}).sort("seq", ASCENDING)
            for doc in await self._read(cursor.to_list(None)):
                if await self._read(self.store.change(gid, {"_id": doc["_id"], "rev": UNREVISED}, {})):
                    done += 1
            above = upto
        return done

    async def _mark_finished(self) -> None:
        await self._read(self._db.schema_migrations.update_one(MARKER, {"$set": {"done": True}}, upsert=True))


async def backfill_in_background(store: MongoStore) -> None:
    """The server's own run at start, on its open store: nothing when a run finished before."""
    backfill = RevisionBackfill(store)
    try:
        if await backfill.finished():
            return
        result = await backfill.run()
        if result.assigned:
            log.info("revisions given to %d older messages in %d groups", result.assigned, result.groups)
    except StorageUnavailable as exc:
        log.warning("older messages could not get revisions yet (%s); the next start tries again", exc)
