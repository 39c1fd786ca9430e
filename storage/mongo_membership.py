"""Who is in which study group, as MongoDB says now, and the ``study_groups`` change stream.

``study_groups`` belongs to the wider application: members are ``ObjectId`` s in
``members`` (anything else in the array is not a member, as for ``get_group``).

The change stream tells which groups changed, nothing more: whoever reads it
re-reads those groups. Its resume token is kept in the store's own collection
``membership_watch`` (``{_id: "study_groups", token}``, shared by every
node: they all read the same stream), so a restarted watcher goes on where the
deployment's last one stopped instead of missing what happened meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import OperationFailure, PyMongoError

from .base import StorageUnavailable
from .mongo_documents import oid_or_none

if TYPE_CHECKING:
    from .mongo import MongoStore

log = logging.getLogger(__name__)

USERS_PER_QUERY = 500
TOKENS = "membership_watch"
TOKEN_ID = "study_groups"
TOKEN_SAVE_INTERVAL_S = 1.0
# Only the change's kind and its group's id travel: the group is re-read anyway.
PIPELINE = [{"$project": {"operationType": 1, "documentKey": 1}}]
GROUP_CHANGES = frozenset({"insert", "update", "replace", "delete"})
# "The $changeStream stage is only supported on replica sets", an unknown
# pipeline stage (servers older than 3.6, other MongoDB-wire servers), or an
# unsupported command.
UNSUPPORTED_CODES = frozenset({40573, 40324, 115})


class ChangeStreamsUnsupported(Exception):
    """The server has no change streams (a standalone ``mongod``, say): poll instead."""


async def group_members(db: Any, group_id: str) -> frozenset[str] | None:
    gid = oid_or_none(group_id)
    if gid is None:
        return None
    doc = await db.study_groups.find_one({"_id": gid}, {"members": 1})
    return None if doc is None else _member_ids(doc)


async def user_groups(db: Any, user_ids: Collection[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {user_id: set() for user_id in user_ids}
    uids = [uid for uid in map(oid_or_none, found) if uid is not None]
    for start in range(0, len(uids), USERS_PER_QUERY):
        batch = uids[start:start + USERS_PER_QUERY]
        async for doc in db.study_groups.find({"members": {"$in": batch}}, {"members": 1}):
            group_id = str(doc["_id"])
            for user_id in _member_ids(doc) & found.keys():
                found[user_id].add(group_id)
    return found


class GroupChangeStream:
    """One node's view of the ``study_groups`` change stream."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store
        self._token: Any = None  # where the next (re)start resumes
        self._loaded = False
        self._saved_at = 0.0

    async def changes(self) -> AsyncIterator[str | None]:
        """Yield the id of each group that changed, and ``None`` whenever changes may
        have been missed (right after every start, and after a drop or an
        invalidation): re-read everything then. Ends after an invalidation (start
        again); raises ``ChangeStreamsUnsupported``, or ``StorageUnavailable``
        for anything that may pass (start again after a pause)."""
        try:
            stream = await self._open()
        except PyMongoError as exc:
            raise StorageUnavailable(f"cannot watch study_groups: {exc}") from exc
        try:
            async with stream:
                yield None
                async for change in stream:
                    self._token = stream.resume_token
                    kind = change.get("operationType")
                    group_id = (change.get("documentKey") or {}).get("_id")
                    if kind in GROUP_CHANGES and isinstance(group_id, ObjectId):
                        yield str(group_id)
                    else:  # drop, rename, dropDatabase, invalidate
                        yield None
                        if kind == "invalidate":
                            self._token = None
                            return
                    await self._save_token()
        except PyMongoError as exc:
            raise StorageUnavailable(f"the study_groups change stream failed: {exc}") from exc

    async def _open(self) -> Any:
        collection = self._store.database.study_groups
        if not self._loaded:
            self._loaded = True
            saved = await self._store.database[TOKENS].find_one({"_id": TOKEN_ID})
            self._token = None if saved is None else saved.get("token")
        if self._token is not None:
            try:
                return await collection.watch(PIPELINE, resume_after=self._token)
            except OperationFailure as exc:  # too old (history lost) or not a token of this server
                log.warning("cannot resume the study_groups change stream (%s); starting from now", exc)
                self._token = None
        try:
            return await collection.watch(PIPELINE)
        except OperationFailure as exc:
            if exc.code in UNSUPPORTED_CODES:
                raise ChangeStreamsUnsupported(str(exc)) from exc
            raise

    async def _save_token(self) -> None:
        """Keep the resume point for the next start (at most once per interval)."""
        now = time.monotonic()
        if self._token is None or now - self._saved_at < TOKEN_SAVE_INTERVAL_S:
            return
        self._saved_at = now
        try:
            await self._store.database[TOKENS].update_one(
                {"_id": TOKEN_ID}, {"$set": {"token": self._token}}, upsert=True
            )
        except PyMongoError as exc:  # only the next start's resume point is older
            log.warning("cannot save the study_groups resume token: %s", exc)


def _member_ids(doc: dict[str, Any]) -> frozenset[str]:
    members = doc.get("members")
    if not isinstance(members, list):
        return frozenset()
    return frozenset(str(m) for m in members if isinstance(m, ObjectId))
