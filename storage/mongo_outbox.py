"""The webhook outbox on MongoDB: the ``webhook_outbox`` collection, in the
database of the ``MongoStore`` it belongs to.

Documents: ``{_id: <webhook-id>, type, body: <JSON text>, status: "pending" |
"delivered" | "failed", created_at: date, due_at: date, attempts: int,
lease?: str, last_error?: str, done_at?: date}``.

- ``add`` upserts with ``$setOnInsert``: writing an event again (a retried
  send) leaves a pending, delivered or failed one as it is.
- ``claim`` is one ``find_one_and_update`` on ``{status: pending, due_at <=
  now}``, oldest due first, that moves ``due_at`` to the end of the lease and
  sets a fresh ``lease`` token: exactly one sender gets each event, and an
  expired lease is simply due again. Every later write matches that token.
- Delivered events lose their body and are removed after a week (a TTL
  index), long enough that a retried send cannot write them again; failed
  events stay, body included, until an operator removes them.

Indexes: ``(status, due_at)`` for claims and the next due time, ``(status,
created_at)`` for the oldest pending event's age, and the TTL index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from .base import StorageUnavailable
from .mongo import MongoStore
from .outbox import DELIVERED, FAILED, PENDING, Claimed, OutboxEvent, OutboxStats, lease_token

COLLECTION = "webhook_outbox"
DELIVERED_KEPT_S = 7 * 24 * 3600
DUPLICATE_KEY = 11000

INDEXES = [
    IndexModel([("status", ASCENDING), ("due_at", ASCENDING)], name="status_due"),
    IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name="status_created"),
    IndexModel(
        [("done_at", ASCENDING)],
        name="delivered_expiry",
        expireAfterSeconds=DELIVERED_KEPT_S,
        partialFilterExpression={"status": DELIVERED},
    ),
]

T = TypeVar("T")
P = ParamSpec("P")


def _unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Driver failures as ``StorageUnavailable``, as in ``MongoStore``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {type(exc).__name__}: {str(exc)[:300]}") from exc

    return wrapper


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class MongoOutbox:
    """An ``Outbox`` in the ``webhook_outbox`` collection of ``store``'s database."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store

    @property
    def _coll(self) -> Any:
        return self._store.database[COLLECTION]

    @_unavailable
    async def open(self) -> None:
        await self._coll.create_indexes(INDEXES)

    @_unavailable
    async def add(self, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
        now = _now()
        writes = [
            UpdateOne(
                {"_id": e.id},
                {"$setOnInsert": {"type": e.type, "body": e.body, "status": PENDING,
                                  "created_at": now, "due_at": now, "attempts": 0}},
                upsert=True,
            )
            for e in events
        ]
        for attempt in range(3):
            try:
                await self._coll.bulk_write(writes, ordered=False)
                return
            except BulkWriteError as exc:
                # Two writers upserting the same id at once: one insert wins and
                # the other's is a duplicate key, which is the outcome wanted.
                errors = exc.details.get("writeErrors", [])
                if all(e.get("code") == DUPLICATE_KEY for e in errors):
                    if attempt == 2:
                        return
                    continue
                raise

    @_unavailable
    async def claim(self, owner: str, lease_s: float) -> Claimed | None:
        now = _now()
        token = lease_token(owner)
        doc = await self._coll.find_one_and_update(
            {"status": PENDING, "due_at": {"$lte": now}},
            {"$set": {"due_at": now + timedelta(seconds=lease_s), "lease": token}, "$inc": {"attempts": 1}},
            sort=[("due_at", ASCENDING)],
            projection={"type": 1, "body": 1, "created_at": 1, "attempts": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        return Claimed(
            str(doc["_id"]), str(doc["type"]), str(doc["body"]),
            doc["created_at"].timestamp(), int(doc["attempts"]), token,
        )

    async def _finish(self, event: Claimed, changes: dict[str, Any]) -> bool:
        result = await self._coll.update_one({"_id": event.id, "status": PENDING, "lease": event.lease}, changes)
        return bool(result.matched_count)

    @_unavailable
    async def delivered(self, event: Claimed) -> bool:
        return await self._finish(event, {
            "$set": {"status": DELIVERED, "done_at": _now()}, "$unset": {"lease": "", "body": ""},
        })

    @_unavailable
    async def retry_at(self, event: Claimed, due: float, error: str) -> bool:
        return await self._finish(event, {
            "$set": {"due_at": _at(due), "last_error": error[:500]}, "$unset": {"lease": ""},
        })

    @_unavailable
    async def failed(self, event: Claimed, error: str) -> bool:
        return await self._finish(event, {
            "$set": {"status": FAILED, "done_at": _now(), "last_error": error[:500]}, "$unset": {"lease": ""},
        })

    @_unavailable
    async def next_due(self) -> float | None:
        doc = await self._coll.find_one({"status": PENDING}, {"due_at": 1}, sort=[("due_at", ASCENDING)])
        return None if doc is None else float(doc["due_at"].timestamp())

    @_unavailable
    async def stats(self) -> OutboxStats:
        depth = await self._coll.count_documents({"status": PENDING})
        oldest = None
        if depth:
            doc = await self._coll.find_one(
                {"status": PENDING}, {"created_at": 1}, sort=[("created_at", ASCENDING)]
            )
            oldest = None if doc is None else float(doc["created_at"].timestamp())
        return OutboxStats(int(depth), oldest)

    @_unavailable
    async def status(self, event_id: str) -> str | None:
        """An event's status (for tests and tools; not part of ``Outbox``)."""
        doc = await self._coll.find_one({"_id": event_id}, {"status": 1})
        return None if doc is None else str(doc["status"])
