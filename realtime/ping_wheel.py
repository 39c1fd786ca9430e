"""``PingWheel``: Engine.IO's pings for every connection from one task."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from engineio import packet as eio_packet

from .websocket_frames import websocket_frame

if TYPE_CHECKING:
    from .engine_server import FastEngineServer
    from .engine_socket import FastSocket

log = logging.getLogger(__name__)

# Pings falling due within this long of each other go out in one wake-up, so that a node with
# many connections wakes a few dozen times a second, not once per ping. A ping is then at most
# this late: nothing next to the 20 s a client waits for one past its interval.
BATCH_S = 0.05
PING_FRAME = websocket_frame(eio_packet.Packet(eio_packet.PING).encode().encode())


class PingWheel:
    """Sends Engine.IO's pings for every connection from one task.

    Every connection waits the same ``ping_interval`` after its previous pong,
    so a FIFO of due times (and of their sockets, in step) is already sorted. A connection on
    WebSocket gets the ping as a frame built once (nothing is encoded per ping)."""

    def __init__(self, server: FastEngineServer) -> None:
        self._server = server
        # When each ping falls due, and for whom: two deques in step rather than one of
        # (due, socket) pairs, which would be one more object per connection for a
        # collection of the garbage collector to walk.
        self._due: collections.deque[float] = collections.deque()
        self._sockets: collections.deque[FastSocket] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def add(self, socket: FastSocket) -> None:
        self._due.append(time.monotonic() + self._server.ping_interval)
        self._sockets.append(socket)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        due, sockets = self._due, self._sockets
        while due:
            now = time.monotonic()
            wall = time.time()
            while due and due[0] <= now:
                due.popleft()
                socket = sockets.popleft()
                if socket.closing or socket.closed:
                    continue
                socket.last_ping = wall
                transport = socket.transport
                if transport is not None:
                    socket.write_frame(transport, PING_FRAME)
                    continue
                try:  # long-polling, or mid-upgrade: the socket's queue
                    await socket.send(eio_packet.Packet(eio_packet.PING))
                except Exception:  # a socket closing meanwhile; the others go on
                    log.debug("ping to %s failed", socket.sid, exc_info=True)
            if due:
                await asyncio.sleep(max(BATCH_S, due[0] - time.monotonic()))

    async def close(self) -> None:
        self._due.clear()
        self._sockets.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
