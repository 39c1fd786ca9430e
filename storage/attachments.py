"""Uploaded files: what is kept about each, and the interface both stores offer.

An attachment belongs to the group it was uploaded to and to its uploader. It is
an orphan until a message of theirs in that group uses it; orphans older than
``ATTACHMENT_ORPHAN_TTL_S`` are removed, and a message's files go with it.
``memory`` keeps the bytes in process memory (the embedded store),
``mongo_attachments`` in MongoDB GridFS. Both read a file in ranges, so a
download never holds a whole file either; a backend that does not answer raises
``StorageUnavailable``, as the message store does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bson import ObjectId

READ_CHUNK = 255 * 1024  # GridFS's default chunk size


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    group_id: str
    uploader_id: str
    name: str
    size: int
    content_type: str
    created_at: datetime
    width: int | None = None
    height: int | None = None
    thumbnail_type: str | None = None  # "image/jpeg" or "image/png" when there is a thumbnail
    claim: str | None = None  # the send that is using it (``claim_key``), once one is
    message_id: str | None = None  # the id that send's message has (or will have)
    attached: bool = False  # that message is stored
    claimed_at: datetime | None = None

    def to_wire(self) -> dict[str, Any]:
        """The object messages and the upload's answer carry."""
        wire: dict[str, Any] = {
            "id": self.id, "name": self.name, "size": self.size, "content_type": self.content_type,
        }
        if self.width is not None and self.height is not None:
            wire["width"], wire["height"] = self.width, self.height
        return wire


def new_attachment(group_id: str, uploader_id: str, name: str, size: int, content_type: str, created_at: datetime,
                   **image: Any) -> Attachment:
    return Attachment(str(ObjectId()), group_id, uploader_id, name, size, content_type, created_at, **image)


def claim_key(sender_id: str, client_msg_id: str) -> str:
    """What marks an attachment as taken by one send (resends of it find it theirs)."""
    return f"{sender_id}:{client_msg_id}"


class AttachmentStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, attachment: Attachment, source: Path, thumbnail: bytes | None) -> Attachment:
        """Keep the file at ``source`` (read in chunks) under ``attachment``'s id."""

    async def get(self, attachment_id: str) -> Attachment | None: ...

    def read(self, attachment: Attachment, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``start`` to ``end`` (exclusive), in chunks."""

    async def thumbnail(self, attachment: Attachment) -> bytes | None: ...

    async def claim(self, attachment_ids: Sequence[str], claim: str, message_id: str) -> list[Attachment]:
        """Mark the attachments as used by the send ``claim``, whose message will have
        the id ``message_id`` (each must be unclaimed or already this send's: then it
        keeps the id of that send's first try); the ones that could be, in the order asked."""

    async def release(self, attachment_ids: Sequence[str], claim: str) -> None:
        """Undo ``claim`` for a send that was not stored."""

    async def attach(self, attachment_ids: Sequence[str]) -> None:
        """The claiming send's message is stored: the files are its own now."""

    async def delete(self, attachment_ids: Sequence[str]) -> int:
        """Remove the files (a deleted message's); how many were there."""

    async def orphans(self, older_than: datetime, limit: int) -> list[Attachment]:
        """Attachments created before ``older_than`` not known to be a stored message's
        (unclaimed, or claimed by a send that stopped before ``attach``)."""

    async def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds`` unless another holder has it:
        a job that one node at a time should run."""


class MemoryAttachments:
    """The embedded store's files, in process memory (nothing survives a restart)."""

    def __init__(self) -> None:
        self._meta: dict[str, Attachment] = {}
        self._data: dict[str, bytes] = {}
        self._thumbs: dict[str, bytes] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, attachment: Attachment, source: Path, thumbnail: bytes | None) -> Attachment:
        self._data[attachment.id] = await asyncio.to_thread(source.read_bytes)
        if thumbnail is not None:
            self._thumbs[attachment.id] = thumbnail
        self._meta[attachment.id] = attachment
        return attachment

    async def get(self, attachment_id: str) -> Attachment | None:
        return self._meta.get(attachment_id.lower())

    async def read(self, attachment: Attachment, start: int, end: int) -> AsyncIterator[bytes]:
        data = self._data.get(attachment.id, b"")
        for at in range(start, end, READ_CHUNK):
            yield data[at:min(end, at + READ_CHUNK)]

    async def thumbnail(self, attachment: Attachment) -> bytes | None:
        return self._thumbs.get(attachment.id)

    async def claim(self, attachment_ids: Sequence[str], claim: str, message_id: str) -> list[Attachment]:
        taken = []
        for attachment_id in attachment_ids:
            held = self._meta.get(attachment_id)
            if held is not None and held.claim is None:
                held = self._meta[attachment_id] = replace(
                    held, claim=claim, message_id=message_id, claimed_at=datetime.now(UTC)
                )
            if held is not None and held.claim == claim:
                taken.append(held)
        return taken

    async def release(self, attachment_ids: Sequence[str], claim: str) -> None:
        for attachment_id in attachment_ids:
            held = self._meta.get(attachment_id)
            if held is not None and held.claim == claim and not held.attached:
                self._meta[attachment_id] = replace(held, claim=None, message_id=None)

    async def attach(self, attachment_ids: Sequence[str]) -> None:
        for attachment_id in attachment_ids:
            held = self._meta.get(attachment_id)
            if held is not None:
                self._meta[attachment_id] = replace(held, attached=True)

    async def delete(self, attachment_ids: Sequence[str]) -> int:
        gone = 0
        for attachment_id in attachment_ids:
            gone += self._meta.pop(attachment_id, None) is not None
            self._data.pop(attachment_id, None)
            self._thumbs.pop(attachment_id, None)
        return gone

    async def orphans(self, older_than: datetime, limit: int) -> list[Attachment]:
        found = [a for a in self._meta.values() if not a.attached and a.created_at < older_than]
        return found[:limit]

    async def lease(self, name: str, holder: str, seconds: float) -> bool:
        return True  # one process: nobody else to share with
