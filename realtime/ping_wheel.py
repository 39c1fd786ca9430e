"""``PingWheel``: Engine.IO's pings for every connection from one task."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from engineio import packet as eio_packet

if TYPE_CHECKING:
    from .engine_server import FastEngineServer
    from .engine_socket import FastSocket

log = logging.getLogger(__name__)


class PingWheel:
    """Sends Engine.IO's pings for every connection from one task.

    Every connection waits the same ``ping_interval`` after its previous pong,
    so a FIFO of ``(due, socket)`` is already sorted by due time."""

    def __init__(self, server: FastEngineServer) -> None:
        self._server = server
        self._due: collections.deque[tuple[float, FastSocket]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def add(self, socket: FastSocket) -> None:
        self._due.append((time.monotonic() + self._server.ping_interval, socket))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        due = self._due
        while due:
            now = time.monotonic()
            while due and due[0][0] <= now:
                socket = due.popleft()[1]
                if socket.closing or socket.closed:
                    continue
                socket.last_ping = time.time()
                try:
                    await socket.send(eio_packet.Packet(eio_packet.PING))
                except Exception:  # a socket closing meanwhile; the others go on
                    log.debug("ping to %s failed", socket.sid, exc_info=True)
            if due:
                await asyncio.sleep(max(0.0, due[0][0] - time.monotonic()))

    async def close(self) -> None:
        self._due.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
