"""Engine.IO, made lighter per connection and per frame.

``FastEngineServer`` is python-engineio's ``AsyncServer`` with five changes that
leave the protocol as it is:

- a new WebSocket connection is set up by one coroutine (``handle_request``)
  rather than Engine.IO's chain of five, each of which would stay suspended
  for the connection's whole life;
- each connection's outgoing queue is a ``LightQueue`` (an idle
  ``asyncio.Queue`` holds four 64-slot deque blocks, about 2.5 KB);
- one ``PingWheel`` task pings every connection, instead of a sleeping task,
  timer and future per connection;
- WebSockets are accepted without permessage-deflate: browsers offer it, and
  a negotiated connection that has sent anything holds a zlib compressor of
  about 100 KB for its whole life, and pays CPU for every frame;
- frames for WebSocket connections are written to their transports directly,
  and the frames one transport gets in one loop iteration leave as one write
  (``write_soon``): no writer task and queue per connection.

A connection that cannot keep up (``MAX_BUFFERED`` bytes unsent) is closed
rather than buffered without bound; standard clients reconnect by themselves.

``FastSocket`` is the per-connection socket (see its docstring).
"""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp

from .engine_socket import FastSocket
from .light_queue import LightQueue
from .ping_wheel import PingWheel
from .websocket_frames import write_frames


class PlainWebSocket(eio_aiohttp.WebSocket):
    """engineio's aiohttp WebSocket, accepted without permessage-deflate."""

    async def __call__(self, environ):
        await self.accept(environ)
        await self.handler(self)
        return self._sock

    async def accept(self, environ) -> None:
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ


class FastEngineServer(engineio.AsyncServer):
    start_plain_event = None  # set by FastSocketServer: what FastSocket's reader hands plain events to

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._async = {**self._async, "websocket": PlainWebSocket}
        self.ping_wheel = PingWheel(self)
        self._pending: dict[Any, list[bytes]] = {}
        self._flush_scheduled = False

    def write_soon(self, transport, frame: bytes) -> None:
        """Write ``frame`` to ``transport`` at the end of this loop iteration,
        together with the other frames it gets meanwhile (one write).

        Every frame to a WebSocket connection goes through here, so frames keep
        the order in which they were handed over.
        """
        pending = self._pending.get(transport)
        if pending is not None:
            pending.append(frame)
            return
        self._pending[transport] = [frame]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def flush(self, transport) -> None:
        """Write what waits for ``transport`` now (before its closing frame)."""
        frames = self._pending.pop(transport, None)
        if frames:
            write_frames(transport, frames)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for transport, frames in pending.items():
            write_frames(transport, frames)

    def create_queue(self, *args, **kwargs):
        return LightQueue()

    async def handle_request(self, request):
        """Engine.IO's entry point. A new WebSocket connection (``GET
        ?EIO=4&transport=websocket`` with no ``sid``, the commonest request) is
        handled here in one frame: the chain of calls Engine.IO makes for it
        would each stay suspended, holding memory, for the connection's whole
        life. Every other request, and any such request Engine.IO would refuse
        (a bad origin, say), goes to Engine.IO's ``handle_request``."""
        query = request.query
        if (request.method != "GET" or "sid" in query or "j" in query
                or query.get("transport") != "websocket" or query.get("EIO") != "4"
                or "websocket" not in self.transports
                or request.headers.get("Upgrade", "").lower() != "websocket"):
            return await super().handle_request(request)
        environ = self._async["translate_request"](request)
        origin = environ.get("HTTP_ORIGIN")
        if origin and self.cors_allowed_origins != []:
            allowed = self._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                return await super().handle_request(request)  # Engine.IO's refusal
        # Engine.IO's _handle_connect, for the websocket transport.
        if self.start_service_task:
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)
        sid = self.generate_id()
        socket = self.sockets[sid] = FastSocket(self, sid)
        await socket.send(eio_packet.Packet(eio_packet.OPEN, {
            "sid": sid,
            "upgrades": [],
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            return await self._make_response(self._unauthorized(accepted or None), environ)
        socket.schedule_ping()
        ws = PlainWebSocket(socket._websocket_handler, self)
        try:
            await ws.accept(environ)
        except Exception:  # the client left before the handshake completed
            await socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)
            self.sockets.pop(sid, None)
            raise
        await socket._websocket_handler(ws)
        if socket.closed and sid in self.sockets:
            del self.sockets[sid]
        return ws._sock

    async def shutdown(self):
        await self.ping_wheel.close()
        await super().shutdown()
