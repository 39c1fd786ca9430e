"""Attachments in MongoDB GridFS (bucket ``attachments``), through pymongo's async
GridFS API: the file's chunks in ``attachments.chunks``, and in the file document
of ``attachments.files`` its name and, under ``metadata``, the group, uploader,
type, image size, thumbnail (small: in the document), claim and message.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import Binary, ObjectId
from gridfs import AsyncGridFSBucket, NoFile
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

from .attachments import READ_CHUNK, Attachment
from .base import StorageUnavailable

BUCKET = "attachments"
FILES = f"{BUCKET}.files"
ORPHANS_INDEX = "attachment_orphans"


def _unavailable(method):
    @functools.wraps(method)
    async def run(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {exc}") from exc

    return run


def _oids(attachment_ids: Sequence[str]) -> list[ObjectId]:
    return [ObjectId(i) for i in attachment_ids if ObjectId.is_valid(i)]


def _attachment(doc: dict[str, Any]) -> Attachment:
    meta = doc.get("metadata") or {}
    return Attachment(
        id=str(doc["_id"]), group_id=meta["group_id"], uploader_id=meta["uploader_id"], name=doc["filename"],
        size=doc["length"], content_type=meta["content_type"], created_at=doc["uploadDate"],
        width=meta.get("width"), height=meta.get("height"), thumbnail_type=meta.get("thumbnail_type"),
        claim=meta.get("claim"), message_id=meta.get("message_id"), attached=bool(meta.get("attached")),
        claimed_at=meta.get("claimed_at"),
    )


class GridFSAttachments:
    """An ``AttachmentStore`` on the database of the Mongo store."""

    def __init__(self, database: Callable[[], Any]) -> None:
        self._database = database  # the Mongo store's, once it is open

    @_unavailable
    async def open(self) -> None:
        self._db = self._database()
        self._bucket = AsyncGridFSBucket(self._db, bucket_name=BUCKET)
        self._files = self._db[FILES]
        # Orphans: files no message carries, oldest first (the sweep's read).
        await self._files.create_index(
            [("metadata.attached", ASCENDING), ("uploadDate", ASCENDING)], name=ORPHANS_INDEX
        )

    async def close(self) -> None:
        return None

    @_unavailable
    async def put(self, attachment: Attachment, source: Path, thumbnail: bytes | None) -> Attachment:
        metadata: dict[str, Any] = {
            "group_id": attachment.group_id, "uploader_id": attachment.uploader_id,
            "content_type": attachment.content_type, "message_id": None, "claim": None, "attached": False,
        }
        if attachment.width is not None:
            metadata.update(width=attachment.width, height=attachment.height)
        if thumbnail is not None:
            metadata.update(thumbnail=Binary(thumbnail), thumbnail_type=attachment.thumbnail_type)
        file_id = ObjectId(attachment.id)
        with source.open("rb") as f:
            await self._bucket.upload_from_stream_with_id(file_id, attachment.name, f, metadata=metadata)
        doc = await self._files.find_one({"_id": file_id}, {"metadata.thumbnail": 0})
        assert doc is not None
        return _attachment(doc)

    @_unavailable
    async def get(self, attachment_id: str) -> Attachment | None:
        if not ObjectId.is_valid(attachment_id):
            return None
        doc = await self._files.find_one({"_id": ObjectId(attachment_id)}, {"metadata.thumbnail": 0})
        return None if doc is None else _attachment(doc)

    async def read(self, attachment: Attachment, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            grid_out = await self._bucket.open_download_stream(ObjectId(attachment.id))
            await grid_out.seek(start)
            left = end - start
            while left > 0:
                chunk = await grid_out.read(min(READ_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        except NoFile:
            return
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {exc}") from exc

    @_unavailable
    async def thumbnail(self, attachment: Attachment) -> bytes | None:
        doc = await self._files.find_one({"_id": ObjectId(attachment.id)}, {"metadata.thumbnail": 1})
        data = ((doc or {}).get("metadata") or {}).get("thumbnail")
        return bytes(data) if data is not None else None

    @_unavailable
    async def claim(self, attachment_ids: Sequence[str], claim: str, message_id: str) -> list[Attachment]:
        oids = _oids(attachment_ids)
        await self._files.update_many(
            {"_id": {"$in": oids}, "metadata.claim": None},
            {"$set": {"metadata.claim": claim, "metadata.message_id": message_id,
                      "metadata.claimed_at": datetime.now(UTC)}},
        )
        docs = {
            str(d["_id"]): _attachment(d)
            async for d in self._files.find(
                {"_id": {"$in": oids}, "metadata.claim": claim}, {"metadata.thumbnail": 0}
            )
        }
        return [docs[i] for i in attachment_ids if i in docs]

    @_unavailable
    async def release(self, attachment_ids: Sequence[str], claim: str) -> None:
        await self._files.update_many(
            {"_id": {"$in": _oids(attachment_ids)}, "metadata.claim": claim, "metadata.attached": False},
            {"$set": {"metadata.claim": None, "metadata.message_id": None}},
        )

    @_unavailable
    async def attach(self, attachment_ids: Sequence[str]) -> None:
        await self._files.update_many(
            {"_id": {"$in": _oids(attachment_ids)}}, {"$set": {"metadata.attached": True}}
        )

    @_unavailable
    async def delete(self, attachment_ids: Sequence[str]) -> int:
        gone = 0
        for oid in _oids(attachment_ids):
            try:
                await self._bucket.delete(oid)
                gone += 1
            except NoFile:
                pass
        return gone

    @_unavailable
    async def lease(self, name: str, holder: str, seconds: float) -> bool:
        now = datetime.now(UTC)
        try:
            await self._db.leases.update_one(
                {"_id": name, "$or": [{"until": {"$lt": now}}, {"holder": holder}]},
                {"$set": {"holder": holder, "until": now + timedelta(seconds=seconds)}},
                upsert=True,
            )
        except DuplicateKeyError:  # held by another node: the upsert found no match and collided
            return False
        return True

    @_unavailable
    async def orphans(self, older_than: datetime, limit: int) -> list[Attachment]:
        cursor = self._files.find(
            {"metadata.attached": False, "uploadDate": {"$lt": older_than}}, {"metadata.thumbnail": 0}
        ).sort("uploadDate", ASCENDING).limit(limit)
        return [_attachment(d) async for d in cursor]
