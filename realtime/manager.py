"""``FastManager``: python-socketio's room manager with a one-encoding broadcast path."""

from __future__ import annotations

import logging
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .codec import encode_plain
from .engine_socket import FastSocket
from .websocket_frames import websocket_frame

log = logging.getLogger(__name__)

MAX_QUEUED = 1_000  # packets waiting for one (long-polling) connection before it is dropped


class FastManager(socketio.AsyncManager):
    """Room emits without callbacks: one encoding, then a frame on each transport or queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (namespace, sid) -> the rooms it is in. python-socketio finds a
        # disconnecting client's rooms by scanning every room of the namespace
        # (each connection has one of its own): O(n) per disconnect, O(n²)
        # when thousands leave at once, as after a deploy.
        self._rooms_of: dict[tuple[str, str], set] = {}

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid, namespace, **kwargs):
        """python-socketio's, with the client's rooms from the index."""
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid, namespace):
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    async def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if callback is not None or not self.emit_now(event, data, namespace, room, skip_sid):
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)

    def emit_now(self, event, data, namespace, room, skip_sid) -> bool:
        """Hand the emit to every recipient before returning; ``False`` when it
        is not a plain (single-argument, plain JSON) emit this path handles."""
        if isinstance(data, tuple):
            return False
        encoded = encode_plain(sio_packet.EVENT, namespace, None, [event] if data is None else [event, data])
        if encoded is None:
            return False
        if namespace not in self.rooms:
            return True
        frame = pkt = None
        skip = skip_sid if isinstance(skip_sid, (list, set, tuple)) else (skip_sid,)
        sockets = self.server.eio.sockets
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed or socket.closing or getattr(socket, "dropping", False):
                continue
            transport = socket.direct_transport() if type(socket) is FastSocket else None
            if transport is not None:
                if frame is None:
                    frame = websocket_frame(b"4" + encoded)
                socket.write_frame(transport, frame)
                continue
            queue = socket.queue
            if queue.qsize() >= MAX_QUEUED:
                if type(socket) is FastSocket:
                    socket.drop(f"{MAX_QUEUED} packets waiting")
                continue
            if pkt is None:
                pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded.decode())
            queue.put_nowait(pkt)
        return True

    def send_now(self, socket, encoded: bytes) -> bool:
        """Write one Socket.IO packet (UTF-8) to one connection on the direct
        path; ``False``: use its queue."""
        transport = socket.direct_transport() if type(socket) is FastSocket else None
        if transport is None:
            return False
        socket.write_frame(transport, websocket_frame(b"4" + encoded))
        return True
