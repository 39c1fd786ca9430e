"""Fan-out: handing one broadcast to every connection in a room, cheaply and in order.

``FastManager`` replaces python-socketio's per-recipient path (a task per
recipient, then ``asyncio.wait`` on all of them). A broadcast is encoded once;
for a WebSocket connection, the same WebSocket frame bytes are handed to its
transport through ``ChatEngine.write_soon``, the path every frame to that
connection takes, which keeps order. Any other connection (polling, or
mid-upgrade) gets the pre-built packet on its Engine.IO queue. ``ChatServer``
runs on ``engine.ChatEngine`` and its ``FastSocket``s, and starts plain client
events without python-socketio's general packet machinery. python-socketio
stays the library: rooms, the handshake, acks and the Redis queue are its own.

A connection that cannot keep up (``engine.MAX_BUFFERED`` bytes unsent, or
``MAX_QUEUED`` packets waiting) is closed rather than buffered without bound.
Standard clients reconnect by themselves and catch up with ``since_seq``.

Cross-node fan-out on python-socketio's Redis manager, in ``seq`` order.

``AsyncRedisManager`` delivers an emit to this node's clients first and then
publishes it for the other nodes. Two things are added here:

- Publishes leave in the order the emits were made (one publisher task), so a
  node's own messages reach other nodes in ``seq`` order.
- Every node passes a group's ``message`` events through a small reorder
  buffer: when ``seq`` N+2 arrives before N+1 (sent by another node a moment
  earlier), it waits up to ``REORDER_WAIT_S`` for N+1. If N+1 never comes (a
  queue fault), the later messages go out anyway and clients see a ``seq``
  jump, which they fill from history. A ``seq`` at or below the last one this
  node delivered for the group is dropped, so no connection ever sees a
  group's ``seq`` go backwards.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from storage.shared_state import PUBLISH_ALL, RedisConnection

from .engine import ChatEngine, FastSocket, in_background, websocket_frame
from .wire import SafeJSON, encode_plain

log = logging.getLogger(__name__)

NAMESPACE = "/"

REORDER_WAIT_S = 0.25
OUTBOX_LIMIT = 10_000
PUBLISH_BATCH = 500  # publishes per script call
MAX_QUEUED = 1_000  # packets waiting for one (long-polling) connection before it is dropped


class ChatServer(socketio.AsyncServer):
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
        return ChatEngine

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


@dataclass
class _GroupOrder:
    last: int | None = None
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class SeqOrder:
    """Decides when each group's ``message`` emits may be delivered."""

    def __init__(self, deliver, wait_s: float = REORDER_WAIT_S) -> None:
        self._deliver = deliver  # called synchronously, in delivery order
        self._wait_s = wait_s
        self._groups: dict[str, _GroupOrder] = {}

    def offer(self, group_id: str, seq: int, message: dict[str, Any]) -> None:
        state = self._groups.setdefault(group_id, _GroupOrder())
        if state.last is None:
            state.last = seq - 1
        if seq <= state.last or seq in state.pending:
            log.debug("dropping late or repeated seq %s of %s (last %s)", seq, group_id, state.last)
            return
        if seq != state.last + 1:
            state.pending[seq] = message
            if state.timer is None:
                state.timer = asyncio.get_running_loop().call_later(self._wait_s, self._give_up, group_id)
            return
        self._deliver(message)
        state.last = seq
        while state.last + 1 in state.pending:
            state.last += 1
            self._deliver(state.pending.pop(state.last))
        if not state.pending and state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _give_up(self, group_id: str) -> None:
        state = self._groups[group_id]
        state.timer = None
        for seq in sorted(state.pending):
            self._deliver(state.pending.pop(seq))
            state.last = seq


class ChatRedisManager(socketio.AsyncRedisManager, FastManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None
        self._deliveries: set[asyncio.Task] = set()
        self._order = SeqOrder(self._deliver_now)
        # The application's Redis connection (set by the cluster): publishes
        # share its pipelines with the other script calls of the same moment.
        self.scripts: RedisConnection | None = None

    def initialize(self) -> None:
        super().initialize()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_in_order())

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if kwargs.get("ignore_queue") or callback is not None or self._outbox is None:
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        message = {
            "method": "emit", "event": event, "data": [data], "binary": False,
            "namespace": namespace or "/", "room": room, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            log.error("Redis publish queue full; dropping an emit for other nodes (clients fill gaps)")
        else:
            self._outbox.put_nowait(message)
        await self._handle_emit(message)

    async def _listen(self):
        """python-socketio's listener (subscribe, yield the data of each message
        on the channel, reconnect with a growing pause after an error) as one
        generator instead of three, which also skips this node's own publishes
        before they are decoded (python-socketio decodes every message, then
        drops its own by ``host_id``). ``host_id`` is the last key of every
        message this node publishes, so the JSON (compact, see ``SafeJSON``)
        ends with it."""
        channel = self.channel.encode()
        own = f'"host_id":"{self.host_id}"}}'.encode()
        pause = 1
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                pause = 1
                async for message in self.pubsub.listen():
                    data = message.get("data")
                    if message["type"] == "message" and message["channel"] == channel and \
                            not (isinstance(data, bytes) and data.endswith(own)):
                        yield data
            except Exception as exc:
                log.error("Cannot receive from Redis (%s); retrying in %d s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 60)

    async def _publish_in_order(self) -> None:
        """Publish what is queued, in order: everything queued meanwhile goes
        out together, one batch at a time."""
        outbox = self._outbox
        assert outbox is not None
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < PUBLISH_BATCH:
                batch.append(outbox.get_nowait())
            try:
                await self._publish_batch(batch)
            except Exception:  # _publish logs and gives up by itself; never stop the loop
                log.exception("publishing to Redis failed")

    async def _publish_batch(self, batch: list[dict[str, Any]]) -> None:
        """One script call publishes the whole batch, in order (subscribers get
        the messages one by one, as from ``PUBLISH``)."""
        encoded = [SafeJSON.dumpb(message) for message in batch]
        try:
            if self.scripts is None:
                raise RuntimeError("no Redis connection for scripts")
            sizes = ",".join([str(len(data)) for data in encoded])
            await self.scripts.call(PUBLISH_ALL, [], [self.channel, b"".join(encoded), sizes])
        except Exception as exc:  # one more try, message by message, as python-socketio's _publish does
            log.error("Cannot publish %d messages to Redis (%s); retrying one by one", len(batch), exc)
            self.connected = False
            for message in batch:
                await self._publish(message)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        payload = data[0] if isinstance(data, list) and len(data) == 1 else None
        if (
            message.get("event") == "message"
            and isinstance(payload, dict)
            and isinstance(payload.get("seq"), int)
            and isinstance(message.get("room"), str)
        ):
            self._order.offer(message["room"], payload["seq"], message)
            return
        await super()._handle_emit(message)

    def _deliver_now(self, message: dict[str, Any]) -> None:
        """Deliver in calling order: in place for plain emits, else through a
        task (tasks start in creation order and queue their packets at once)."""
        data = message["data"]
        if not message.get("binary") and isinstance(data, list) and len(data) == 1 and \
                self.emit_now(message["event"], data[0], message.get("namespace") or "/",
                              message.get("room"), message.get("skip_sid")):
            return
        task = asyncio.ensure_future(super()._handle_emit(message))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def close(self) -> None:
        if self._publisher is not None:
            # Let what is queued go out, briefly.
            for _ in range(20):
                if self._outbox is None or self._outbox.empty():
                    break
                await asyncio.sleep(0.05)
            self._publisher.cancel()
        if getattr(self, "thread", None) is not None:
            self.thread.cancel()
