"""``Admission``: what a connection that has not signed in yet may hold.

An Engine.IO session costs a file descriptor and memory before its client has
proved anything. A session is *pending* from its Engine.IO handshake until its
Socket.IO CONNECT is accepted (and again once it has left every namespace);
a pending session is closed after ``connect_timeout`` seconds, and one client
address may hold at most ``max_per_address`` pending sessions: its next
handshake is refused.

One task serves every deadline (every session waits the same time, so a FIFO
is already sorted by deadline), as ``PingWheel`` does for pings: no timer or
task per connection, and, as there, deadlines that fall within ``BATCH_S`` of
each other are served in one wake-up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 10.0  # seconds: refusals are logged once per interval, with a count
# The task sleeps at least this long between two rounds, so a pending session is closed at most
# this late. Sleeping only until the next deadline would wake it for each of a burst of
# connections, and on uvloop, whose timers round to the millisecond, spin through every gap
# shorter than half of one: 10,000 connections taken in 6 s cost a third of a core for 6 s.
BATCH_S = 0.05

ClientAddress = Callable[[Mapping[str, Any]], str]


def peer_address(environ: Mapping[str, Any]) -> str:
    """The TCP peer's address (``FastEngineServer`` puts aiohttp's in ``REMOTE_ADDR``;
    ``""`` when unknown)."""
    remote = environ.get("REMOTE_ADDR")
    return remote if isinstance(remote, str) else ""


class Admission:
    """Pending sessions by Engine.IO sid, counted per client address, with their deadlines."""

    def __init__(self, connect_timeout: float, max_per_address: int,
                 expire: Callable[[str], Awaitable[None]]) -> None:
        self.connect_timeout = connect_timeout
        self.max_per_address = max_per_address  # 0: no cap
        self._expire = expire
        self._address: dict[str, str] = {}  # eio sid -> client address
        self._deadline: dict[str, float] = {}  # eio sid -> when it is closed
        self._count: collections.Counter[str] = collections.Counter()
        self._due: collections.deque[tuple[float, str]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._refusals = 0  # handshakes refused since the last log line
        self._logged_at = -REFUSAL_LOG_INTERVAL

    def __len__(self) -> int:
        return len(self._address)

    def pending_from(self, address: str) -> int:
        return self._count[address]

    def full(self, address: str) -> bool:
        """Whether ``address`` already holds as many pending sessions as it may."""
        return 0 < self.max_per_address <= self._count[address]

    def refused(self, address: str) -> None:
        """Log a refused handshake, at most once per ``REFUSAL_LOG_INTERVAL``
        (a client can repeat it at will; logs must not amplify it)."""
        self._refusals += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning("%d handshake(s) refused for too many connections not signed in (latest from %s, "
                        "holding %d)", self._refusals, address, self._count[address])
            self._refusals, self._logged_at = 0, now

    def add(self, eio_sid: str, address: str) -> None:
        """``eio_sid`` is pending (again): count it and start its deadline."""
        if eio_sid in self._address:
            return
        self._address[eio_sid] = address
        self._count[address] += 1
        if self.connect_timeout > 0:
            deadline = self._deadline[eio_sid] = time.monotonic() + self.connect_timeout
            self._due.append((deadline, eio_sid))
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._run())

    def discard(self, eio_sid: str) -> None:
        """``eio_sid`` signed in or closed: it no longer counts. Its deadline
        stays in the FIFO and is skipped when it comes due."""
        address = self._address.pop(eio_sid, None)
        if address is None:
            return
        self._deadline.pop(eio_sid, None)
        left = self._count[address] - 1
        if left:
            self._count[address] = left
        else:
            del self._count[address]

    async def _run(self) -> None:
        due = self._due
        while due:
            now = time.monotonic()
            while due and due[0][0] <= now:
                deadline, eio_sid = due.popleft()
                if self._deadline.get(eio_sid) != deadline:
                    continue  # signed in or closed since (or pending again, with a later deadline)
                self.discard(eio_sid)
                try:
                    await self._expire(eio_sid)
                except Exception:  # one session failing to close must not stop the others'
                    log.exception("closing pending session %s failed", eio_sid)
            if due:
                await asyncio.sleep(max(BATCH_S, due[0][0] - time.monotonic()))

    async def close(self) -> None:
        self._due.clear()
        self._address.clear()
        self._deadline.clear()
        self._count.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
