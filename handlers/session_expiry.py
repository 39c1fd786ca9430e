"""``SessionExpiry``: every connection ends with its token, from one task for all of them.

A connection has one due second at a time: first its warning (``session_expiring``,
``warning_s`` before the token's ``exp``), then its end (``exp``). Connections due in the
same second share a bucket, a set of sids; a heap holds the buckets' seconds, and one
task, which runs while any bucket exists, wakes at the next due second (at least once a
second) and works through every bucket that is due. A refresh moves a connection to
another bucket and a disconnect takes it out, both in O(1): an idle connection costs an
entry in one set and two fields on its ``Connection``, never a task, timer or future.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from realtime.socket_server import FastSocketServer
from storage.base import iso_timestamp

log = logging.getLogger(__name__)

WARNING_S = 60  # session_expiring goes out this long before exp
LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: a later exp is treated as this one
BATCH = 256  # connections warned or ended at once while working through a bucket


class Session(Protocol):
    """What the wheel reads and writes on a connection (``handlers.events.Connection``)."""

    sid: str
    expires_at: int  # the token's exp, whole seconds since the epoch
    warned: bool  # session_expiring was sent for this exp
    closed: bool


def expires_at_text(exp: int) -> str:
    """``exp`` as the protocol writes times: ISO 8601, UTC, milliseconds, ``Z``."""
    return iso_timestamp(datetime.fromtimestamp(min(exp, LAST_SECOND), UTC))


class SessionExpiry:
    """Warns each connection ``warning_s`` before its token's ``exp`` and ends it at ``exp``."""

    def __init__(self, sio: FastSocketServer, connections: Mapping[str, Session], *,
                 warning_s: int = WARNING_S, clock: Callable[[], float] = time.time) -> None:
        self._sio = sio
        self._connections = connections
        self._warning_s = warning_s
        self._clock = clock
        self._buckets: dict[int, set[str]] = {}  # due second -> sids
        self._seconds: list[int] = []  # heap of due seconds (some may have lost their bucket)
        self._task: asyncio.Task[None] | None = None

    @property
    def scheduled(self) -> int:
        """Connections waiting for their warning or their end."""
        return sum(len(bucket) for bucket in self._buckets.values())

    async def start(self, conn: Session) -> None:
        """Schedule a connection that has just signed in; a token with less than
        ``warning_s`` left is warned at once (the transport sends it after the CONNECT reply)."""
        conn.expires_at = min(conn.expires_at, LAST_SECOND)
        conn.warned = conn.expires_at - self._clock() <= self._warning_s
        self._schedule(conn)
        if conn.warned:
            await self._warn(conn)

    def extend(self, conn: Session, exp: int) -> None:
        """A refreshed token: the connection now ends at ``exp``. A token with less than
        ``warning_s`` left is warned on the wheel's next turn, after the refresh's ack."""
        self._unschedule(conn)
        conn.expires_at = min(exp, LAST_SECOND)
        conn.warned = False
        self._schedule(conn)

    def forget(self, conn: Session) -> None:
        """The connection closed."""
        self._unschedule(conn)

    async def close(self) -> None:
        self._buckets.clear()
        self._seconds.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the wheel --

    def _due(self, conn: Session) -> int:
        return conn.expires_at if conn.warned else conn.expires_at - self._warning_s

    def _schedule(self, conn: Session) -> None:
        second = self._due(conn)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = {conn.sid}
            heapq.heappush(self._seconds, second)
        else:
            bucket.add(conn.sid)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def _unschedule(self, conn: Session) -> None:
        second = self._due(conn)
        bucket = self._buckets.get(second)
        if bucket is None:
            return
        bucket.discard(conn.sid)
        if not bucket:
            del self._buckets[second]
            # Its second stays in the heap until it comes up; when emptied buckets
            # leave the heap mostly stale (connections come and go), rebuild it.
            if len(self._seconds) > 2 * len(self._buckets) + 64:
                self._seconds = list(self._buckets)
                heapq.heapify(self._seconds)

    async def _run(self) -> None:
        seconds = self._seconds
        while self._buckets:
            now = self._clock()
            while seconds and seconds[0] <= now:
                second = heapq.heappop(seconds)
                bucket = self._buckets.pop(second, None)
                if bucket:
                    await self._fire(second, list(bucket), now)
                seconds = self._seconds  # a rebuild replaced the heap
            wait = 1.0 if not seconds else seconds[0] - self._clock()
            await asyncio.sleep(min(1.0, max(wait, 0.01)))
            seconds = self._seconds

    async def _fire(self, second: int, sids: list[str], now: float) -> None:
        """Warn or end every connection still due at ``second`` (a refresh or a
        disconnect while the bucket is worked through takes a connection out)."""
        ended = 0
        for start in range(0, len(sids), BATCH):
            due = []
            for sid in sids[start:start + BATCH]:
                conn = self._connections.get(sid)
                if conn is None or conn.closed or self._due(conn) != second:
                    continue
                if not conn.warned:
                    conn.warned = True
                    self._schedule(conn)  # its end
                    due.append(self._warn(conn))
                elif conn.expires_at <= now:
                    due.append(self._end(conn))
                    ended += 1
            if due:
                await asyncio.gather(*due)
        if ended:
            log.info("ended %d connections whose token expired", ended)

    async def _warn(self, conn: Session) -> None:
        try:
            await self._sio.emit("session_expiring", {"expires_at": expires_at_text(conn.expires_at)}, to=conn.sid)
        except Exception:  # a connection closing meanwhile; the others go on
            log.debug("session_expiring to %s failed", conn.sid, exc_info=True)

    async def _end(self, conn: Session) -> None:
        try:
            await self._sio.end_connection(conn.sid)
        except Exception:
            log.exception("ending the expired connection %s failed", conn.sid)
