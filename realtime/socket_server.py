"""Fan-out: handing one broadcast to every connection in a room, cheaply and in order.

``FastManager`` replaces python-socketio's per-recipient path (a task per
recipient, then ``asyncio.wait`` on all of them). A broadcast is encoded once;
for a WebSocket connection, the same WebSocket frame bytes are handed to its
transport through ``FastEngineServer.write_soon``, the path every frame to that
connection takes, which keeps order. Any other connection (polling, or
mid-upgrade) gets the pre-built packet on its Engine.IO queue. ``FastSocketServer``
runs on ``engine.FastEngineServer`` and its ``FastSocket``s, and starts plain client
events without python-socketio's general packet machinery. python-socketio
stays the library: rooms, the handshake, acks and the Redis queue are its own.

A connection that cannot keep up (``engine.MAX_BUFFERED`` bytes unsent, or
``MAX_QUEUED`` packets waiting) is closed rather than buffered without bound.
Standard clients reconnect by themselves and catch up with ``since_seq``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import engineio
import socketio
from socketio import packet as sio_packet

from .background import in_background
from .codec import encode_plain
from .engine_server import FastEngineServer
from .engine_socket import FastSocket
from .manager import FastManager

log = logging.getLogger(__name__)

NAMESPACE = "/"


class FastSocketServer(socketio.AsyncServer):
    """``AsyncServer`` with Engine.IO sockets that are ``FastSocket``s, and two
    shortcuts that leave everything else to python-socketio:

    - single-connection packets (acks, connect answers) take the same direct
      path as broadcasts when the connection's queue is empty;
    - the commonest packet, a text event on the default namespace for a handler
      registered by its name, is decoded and started without python-socketio's
      general packet machinery, and its ack is encoded once, straight to a frame
      (``start_plain_event``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eio.start_plain_event = self.start_plain_event  # what FastSocket's reader calls
        self._coroutine_handlers: dict[Any, bool] = {}

    def _engineio_server_class(self):
        return FastEngineServer

    async def _send_packet(self, eio_sid, pkt):
        encoded = pkt.encode()
        if isinstance(encoded, list):  # binary attachments: Engine.IO's queue
            for part in encoded:
                await self.eio.send(eio_sid, part)
        else:
            await self._send_text(eio_sid, encoded.encode())

    async def _send_text(self, eio_sid: str, encoded: bytes) -> None:
        """One text Socket.IO packet (UTF-8) to one connection: straight to its
        transport when its queue is empty, else through Engine.IO's queue."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and isinstance(self.manager, FastManager) and self.manager.send_now(socket, encoded):
            return
        await self.eio.send(eio_sid, encoded.decode())

    async def _handle_eio_connect(self, eio_sid, environ):
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and type(socket) is engineio.async_socket.AsyncSocket:
            socket.__class__ = FastSocket
        return await super()._handle_eio_connect(eio_sid, environ)

    def start_plain_event(self, eio_sid: str, frame: str) -> bool:
        """Start the handler of a ``42[<ack id>]["event", ...]`` frame, the way
        python-socketio would (a task per event, the ack sent when it returns).

        ``False`` for anything this does not cover, which then takes
        python-socketio's path: other namespaces, binary attachments, reserved
        and unregistered event names (the catch-all), connections not (yet)
        connected to the namespace, and payloads that are not a JSON array
        starting with a string."""
        if eio_sid in self._binary_packet:
            return False
        end, i = len(frame), 2
        while i < end and "0" <= frame[i] <= "9":
            i += 1
        if i == end or frame[i] != "[" or i - 2 >= 100:
            return False
        data = self.packet_class.json.loads(frame[i:])
        if type(data) is not list or not data or type(data[0]) is not str:
            return False
        event = data[0]
        if event in self.reserved_events:
            return False
        handler = self.handlers.get(NAMESPACE, {}).get(event)
        if handler is None or not self._is_coroutine(handler):
            return False
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        if sid is None or not self.manager.is_connected(sid, NAMESPACE):
            return False
        ack_id = int(frame[2:i]) if i > 2 else None
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug('received event "%s" from %s [/]', event, sid)
        in_background(self._run_plain(handler, sid, eio_sid, ack_id, data[1:]))
        return True

    def _is_coroutine(self, handler) -> bool:
        known = self._coroutine_handlers.get(handler)
        if known is None:
            known = self._coroutine_handlers[handler] = inspect.iscoroutinefunction(handler)
        return known

    async def _run_plain(self, handler, sid: str, eio_sid: str, ack_id: int | None, args: list[Any]) -> None:
        try:
            result = await handler(sid, *args)
        except asyncio.CancelledError:  # as python-socketio: no answer
            result = None
        if ack_id is None:
            return
        data = [] if result is None else list(result) if isinstance(result, tuple) else [result]
        encoded = encode_plain(sio_packet.ACK, NAMESPACE, ack_id, data)
        if encoded is None:  # not plain JSON: python-socketio's packet (binary attachments)
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=NAMESPACE,
                                                               id=ack_id, data=data))
            return
        await self._send_text(eio_sid, encoded)
