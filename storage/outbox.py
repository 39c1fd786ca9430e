"""The webhook outbox: events waiting to be POSTed, kept in the same storage as
the messages so they are written before a send is acked.

An event is ``pending`` until it is ``delivered`` or ``failed`` (the dead
letter). A sender takes one pending event at a time with ``claim``, which
leases it: its due time moves to the end of the lease, so no other sender
takes it meanwhile, and if the sender dies the lease runs out and the event
is due again for anyone. Every later write names the lease it holds, so a
sender whose lease ran out changes nothing.

``MemoryOutbox`` keeps everything in process memory (the embedded store's
companion): nothing survives a restart. ``storage.mongo_outbox`` is the
durable one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event to send: ``id`` is its ``webhook-id`` (deterministic, so writing
    it again changes nothing), ``body`` the exact JSON text POSTed."""

    id: str
    type: str
    body: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A pending event leased to one sender."""

    id: str
    type: str
    body: str
    created_at: float  # epoch seconds
    attempts: int  # this one included
    lease: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # pending events
    oldest_created_at: float | None  # epoch seconds of the oldest pending event


class Outbox(Protocol):
    """What the webhook sender and the notifier need. Times are epoch seconds."""

    async def open(self) -> None:
        """Create what the outbox needs (idempotent); the store is open already."""

    async def add(self, events: Sequence[OutboxEvent]) -> None:
        """Write ``events`` as pending, due now; an id written before is left as it is."""

    async def claim(self, owner: str, lease_s: float) -> Claimed | None:
        """Lease the pending event due longest ago (if one is due) for ``lease_s`` seconds."""

    async def delivered(self, event: Claimed) -> bool:
        """Mark a leased event delivered; ``False`` when the lease was lost meanwhile."""

    async def retry_at(self, event: Claimed, due: float, error: str) -> bool:
        """Give a leased event back, due again at ``due``."""

    async def failed(self, event: Claimed, error: str) -> bool:
        """Keep a leased event as failed (never sent again)."""

    async def next_due(self) -> float | None:
        """When the next pending event (or lease) is due; ``None`` when nothing is pending."""

    async def stats(self) -> OutboxStats: ...


def lease_token(owner: str) -> str:
    """A token of one claim: a later claim of the same event by anyone differs."""
    return f"{owner}/{uuid.uuid4().hex}"


@dataclass(slots=True)
class _Record:
    event: OutboxEvent
    created_at: float
    due_at: float
    status: str = PENDING
    attempts: int = 0
    lease: str | None = None
    last_error: str | None = None


class MemoryOutbox:
    """An ``Outbox`` in process memory, for the embedded store: lost on restart.

    Delivered events keep their id (not their body), so a retried send does not
    write them again."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._pending: set[str] = set()

    async def open(self) -> None:
        return None

    async def add(self, events: Sequence[OutboxEvent]) -> None:
        now = time.time()
        for event in events:
            if event.id not in self._records:
                self._records[event.id] = _Record(event, now, now)
                self._pending.add(event.id)

    async def claim(self, owner: str, lease_s: float) -> Claimed | None:
        now = time.time()
        due = [self._records[i] for i in self._pending if self._records[i].due_at <= now]
        if not due:
            return None
        record = min(due, key=lambda r: r.due_at)
        record.attempts += 1
        record.due_at = now + lease_s
        record.lease = lease_token(owner)
        e = record.event
        return Claimed(e.id, e.type, e.body, record.created_at, record.attempts, record.lease)

    def _held(self, event: Claimed) -> _Record | None:
        record = self._records.get(event.id)
        if record is None or record.status != PENDING or record.lease != event.lease:
            return None
        return record

    async def delivered(self, event: Claimed) -> bool:
        record = self._held(event)
        if record is None:
            return False
        record.status, record.lease = DELIVERED, None
        record.event = OutboxEvent(event.id, event.type, "")
        self._pending.discard(event.id)
        return True

    async def retry_at(self, event: Claimed, due: float, error: str) -> bool:
        record = self._held(event)
        if record is None:
            return False
        record.due_at, record.lease, record.last_error = due, None, error
        return True

    async def failed(self, event: Claimed, error: str) -> bool:
        record = self._held(event)
        if record is None:
            return False
        record.status, record.lease, record.last_error = FAILED, None, error
        self._pending.discard(event.id)
        return True

    async def next_due(self) -> float | None:
        return min((self._records[i].due_at for i in self._pending), default=None)

    async def stats(self) -> OutboxStats:
        oldest = min((self._records[i].created_at for i in self._pending), default=None)
        return OutboxStats(len(self._pending), oldest)

    def status(self, event_id: str) -> str | None:
        """An event's status (for tests and tools; not part of ``Outbox``)."""
        record = self._records.get(event_id)
        return None if record is None else record.status
