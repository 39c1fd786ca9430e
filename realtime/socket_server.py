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

import socketio
from socketio import packet as sio_packet

from .admission import Admission, ClientAddress, peer_address
from .background import run_eagerly
from .codec import UNDECODABLE_EVENT, binary_header, encode_plain
from .engine_server import FastEngineServer
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

    Connections that have not signed in are bounded (``Admission``): a session
    with no accepted CONNECT is closed after ``connect_timeout`` seconds, and a
    client address (``client_address(environ)``) holding ``max_pending_per_address``
    of them has its next Engine.IO handshake refused. Binary packets are refused
    before anything is buffered: with an ack id, the ack carries ``binary_refusal``;
    without one (or with no ``binary_refusal``), the connection is closed.
    As the reference server does, a CONNECT to a namespace that is not served is
    answered ``{"message": "Invalid namespace"}``, and a packet for a namespace
    the connection is not connected to closes it.
    """

    def __init__(self, *args: Any, connect_timeout: float = 10.0, max_pending_per_address: int = 50,
                 client_address: ClientAddress = peer_address, binary_refusal: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eio.start_plain_event = self.start_plain_event  # what FastSocket's reader calls
        self._coroutine_handlers: dict[Any, bool] = {}
        self.client_address = client_address
        self.admission = Admission(connect_timeout, max_pending_per_address, self._expire_pending)
        self._binary_refusal = binary_refusal
        self._skipping: dict[str, int] = {}  # eio sid -> attachments of a refused packet still to come
        self._held: dict[str, list[tuple[Any, ...]]] = {}  # eio sid -> emits held while its connect handler runs

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
        if not self._send_text_now(eio_sid, encoded):
            await self.eio.send(eio_sid, encoded.decode())

    def _send_text_now(self, eio_sid: str, encoded: bytes) -> bool:
        """``_send_text``'s straight path; ``False`` when the packet must take the queue."""
        socket = self.eio.sockets.get(eio_sid)
        return socket is not None and isinstance(self.manager, FastManager) and self.manager.send_now(socket, encoded)

    async def emit(self, event, data=None, to=None, room=None, skip_sid=None, namespace=None,
                   callback=None, ignore_queue=False):
        """python-socketio's; an emit to one connection whose connect handler is
        still running waits until its CONNECT reply has left, so that the reply
        comes first (as with the reference server)."""
        target = to or room
        namespace = namespace or NAMESPACE
        if self._held and isinstance(target, str):
            held = self._held.get(self.manager.eio_sid_from_sid(target, namespace))
            if held is not None:
                held.append((event, data, target, skip_sid, namespace, callback, ignore_queue))
                return
        # What python-socketio's ``emit`` does, straight from here (every broadcast comes this way).
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info('emitting event "%s" to %s [%s]', event, target or "all", namespace)
        await self.manager.emit(event, data, namespace, room=target, skip_sid=skip_sid, callback=callback,
                                ignore_queue=ignore_queue)

    async def _handle_eio_connect(self, eio_sid, environ):
        address = self.client_address(environ)
        if self.admission.full(address):
            self.admission.refused(address)
            # The body of the reference server's refusal (Engine.IO error 4, "Forbidden").
            return {"code": 4, "message": "Too many connections from this address have not signed in yet"}
        self.admission.add(eio_sid, address)
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid, reason):
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.admission.discard(eio_sid)
            self._skipping.pop(eio_sid, None)

    async def _handle_eio_message(self, eio_sid, data):
        """python-socketio's, except for binary data, which is refused before
        anything is buffered (``_refuse_binary``)."""
        if type(data) is not str:  # a binary frame: an attachment
            left = self._skipping.get(eio_sid)
            if left is None:
                await self._close_session(eio_sid, "binary frame outside a binary packet")
            elif left > 1:
                self._skipping[eio_sid] = left - 1
            else:
                del self._skipping[eio_sid]
            return
        kind = data[:1]
        if kind == "5" or kind == "6":
            await self._refuse_binary(eio_sid, data)
        elif kind in ("0", "1", "2", "3"):
            await super()._handle_eio_message(eio_sid, data)
        else:  # an unknown packet type, or CONNECT_ERROR, which only servers send
            await self._close_session(eio_sid, "unknown packet type")

    async def _refuse_binary(self, eio_sid: str, data: str) -> None:
        """Answer a ``BINARY_EVENT`` with an ack id with ``binary_refusal`` and
        skip its attachments (counted, not kept); close the connection for any
        other binary packet."""
        header = binary_header(data)
        if header is None or data[0] == "6" or header.ack_id is None or self._binary_refusal is None:
            await self._close_session(eio_sid, "binary packet")
            return
        if not await self._connected_or_closed(eio_sid, header.namespace, "binary packet"):
            return
        if header.attachments:
            self._skipping[eio_sid] = self._skipping.get(eio_sid, 0) + header.attachments
        await self._send_packet(eio_sid, self.packet_class(
            sio_packet.ACK, namespace=header.namespace, id=header.ack_id, data=[self._binary_refusal]))

    async def _handle_connect(self, eio_sid, namespace, data):
        """python-socketio's, answering an unknown namespace as the reference
        server does, closing a connection that connects twice to a namespace,
        and sending what the connect handler emitted after the CONNECT reply."""
        namespace = namespace or NAMESPACE
        if not (namespace in self.handlers or namespace in self.namespace_handlers
                or self.namespaces == "*" or namespace in self.namespaces):
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Invalid namespace"}, namespace=namespace))
            return
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            await self._close_session(eio_sid, f"second CONNECT to namespace {namespace[:64]!r}")
            return
        held: list[tuple[Any, ...]] = []
        self._held[eio_sid] = held
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            del self._held[eio_sid]
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        self.admission.discard(eio_sid)
        for event, payload, target, skip_sid, ns, callback, ignore_queue in held:
            await super().emit(event, payload, to=target, skip_sid=skip_sid, namespace=ns,
                               callback=callback, ignore_queue=ignore_queue)

    async def _handle_disconnect(self, eio_sid, namespace, reason=None):
        """python-socketio's; a DISCONNECT for a namespace the connection is not
        connected to closes it, and a connection left in no namespace is pending
        again (``Admission``)."""
        namespace = namespace or NAMESPACE
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        socket = self.eio.sockets.get(eio_sid)
        closing = socket is None or socket.closing or socket.closed
        if not closing and (sid is None or not self.manager.is_connected(sid, namespace)):
            await self._close_session(eio_sid, f"DISCONNECT for namespace {namespace[:64]!r} it is not connected to")
            return
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if not closing and not any(self.manager.sid_from_eio_sid(eio_sid, ns) is not None
                                   for ns in self.manager.get_namespaces()):
            environ = self.environ.get(eio_sid)
            if environ is not None:
                self.admission.add(eio_sid, self.client_address(environ))

    async def _handle_event(self, eio_sid, namespace, id, data):
        """python-socketio's; an event for a namespace the connection is not
        connected to closes it, and a payload that is not a non-empty array is
        the undecodable event (answered ``invalid_payload`` when it has an ack id)."""
        namespace = namespace or NAMESPACE
        if not await self._connected_or_closed(eio_sid, namespace, "event"):
            return
        if type(data) is not list or not data or isinstance(data[0], (dict, list)):
            data = [UNDECODABLE_EVENT]
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_ack(self, eio_sid, namespace, id, data):
        """python-socketio's; an ack for a namespace the connection is not connected to closes it."""
        namespace = namespace or NAMESPACE
        if not await self._connected_or_closed(eio_sid, namespace, "ack"):
            return
        await super()._handle_ack(eio_sid, namespace, id, data)

    async def _connected_or_closed(self, eio_sid: str, namespace: str, what: str) -> bool:
        """Whether the connection is connected to ``namespace``; a packet for a
        namespace it is not connected to is a protocol violation that closes it."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            return True
        await self._close_session(eio_sid, f"{what} for namespace {namespace[:64]!r} it is not connected to")
        return False

    async def _close_session(self, eio_sid: str, why: str) -> None:
        """End an Engine.IO session for a protocol violation (a CLOSE packet, then the transport)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            return
        log.debug("closing session %s: %s", eio_sid, why)
        await socket.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)

    async def end_connection(self, sid: str, namespace: str = NAMESPACE) -> None:
        """End a connection from the server, as the reference server's
        ``socket.disconnect(true)``: a Socket.IO DISCONNECT (after which standard
        clients do not reconnect by themselves), then its Engine.IO session (a
        polling client still fetches both packets with its next poll)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        await self.disconnect(sid, namespace=namespace, ignore_queue=True)
        if eio_sid is not None:
            await self._close_session(eio_sid, "ended by the server")

    async def _expire_pending(self, eio_sid: str) -> None:
        await self._close_session(eio_sid, f"no accepted CONNECT within {self.admission.connect_timeout:g} s")

    async def shutdown(self):
        await self.admission.close()
        await super().shutdown()

    def start_plain_event(self, eio_sid: str, frame: str) -> bool:
        """Start the handler of a ``42[<ack id>]["event", ...]`` frame, the way
        python-socketio would (each event on its own, the ack sent when it returns),
        but run at once up to its first wait (``run_eagerly``): a task only for the
        rest of a handler that waits.

        ``False`` for anything this does not cover, which then takes
        python-socketio's path: other namespaces, reserved
        and unregistered event names (the catch-all), connections not (yet)
        connected to the namespace, and payloads that are not a JSON array
        starting with a string."""
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
        # At once, not as a task: a handler that needs no wait (an idle group's send on the
        # embedded store) is answered before the next frame is read, with no task made.
        run_eagerly(self._run_plain(handler, sid, eio_sid, ack_id, data[1:]))
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
        if not self._send_text_now(eio_sid, encoded):  # an ack is one per event: no coroutine on the straight path
            await self.eio.send(eio_sid, encoded.decode())
