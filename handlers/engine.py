"""Engine.IO, made lighter per connection and per frame.

``ChatEngine`` is python-engineio's ``AsyncServer`` with five changes that
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
import collections
import logging
import time
from typing import Any

import engineio
from aiohttp import web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp

log = logging.getLogger(__name__)

MAX_BUFFERED = 1 << 20  # bytes unsent to one connection before it is dropped


class LightQueue:
    """The part of ``asyncio.Queue`` Engine.IO uses (unbounded), for one
    connection's outgoing packets: items and waiting getters live in deques
    created on first use and dropped when empty, so an idle connection holds
    none."""

    __slots__ = ("_items", "_getters", "_unfinished", "_finished")

    def __init__(self) -> None:
        self._items: collections.deque | None = None
        self._getters: collections.deque | None = None
        self._unfinished = 0
        self._finished: asyncio.Event | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._unfinished += 1
        if self._finished is not None:
            self._finished.clear()
        self._wake_one()

    async def put(self, item) -> None:
        self.put_nowait(item)

    def get_nowait(self):
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self):
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = collections.deque()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._getters is not None:
                    try:
                        self._getters.remove(waiter)
                    except ValueError:
                        pass
                if self._items and not waiter.cancelled():
                    self._wake_one()  # pass the item on to the next getter
                raise
        return self.get_nowait()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not getters:
            self._getters = None

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            self._finished.set()

    async def join(self) -> None:
        if self._unfinished > 0:
            if self._finished is None:
                self._finished = asyncio.Event()
            await self._finished.wait()


class PingWheel:
    """Sends Engine.IO's pings for every connection from one task.

    Every connection waits the same ``ping_interval`` after its previous pong,
    so a FIFO of ``(due, socket)`` is already sorted by due time."""

    def __init__(self, server: "ChatEngine") -> None:
        self._server = server
        self._due: collections.deque = collections.deque()
        self._task: asyncio.Task | None = None

    def add(self, socket) -> None:
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


class ChatEngine(engineio.AsyncServer):
    start_plain_event = None  # set by ChatServer: what FastSocket's reader hands plain events to

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
            _write_frames(transport, frames)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for transport, frames in pending.items():
            _write_frames(transport, frames)

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


def _write_frames(transport, frames: list[bytes]) -> None:
    """One write with every frame waiting for ``transport``, unless it is closing."""
    if not transport.is_closing():
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


TEXT, BINARY = 0x81, 0x82  # first header byte: final frame, opcode


def websocket_frame(payload: bytes, first: int = TEXT) -> bytes:
    """One unmasked, final, uncompressed WebSocket frame (server to client):
    text (``payload`` is UTF-8) unless ``first`` is ``BINARY``."""
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


class FastSocket(engineio.async_socket.AsyncSocket):
    """An Engine.IO socket that, once on WebSocket, writes its packets straight
    to the transport, and that waits without a task per wake-up.

    ``_websocket_handler`` is Engine.IO's own (upgrade probe, then a reader
    loop), except that:

    - there is no writer task: once the WebSocket is up, what was queued
      meanwhile is written, and from then on ``send`` writes each packet
      through ``ChatEngine.write_soon``; the queue serves long-polling only;
    - the reader waits for each frame without the task and ``asyncio.wait_for``
      Engine.IO adds per frame, and with no timeout: a client that stopped
      answering pings has its transport aborted by ``check_ping_timeout``
      (Engine.IO's service task calls it for every connection);
    - plain client events go straight to ``ChatServer.start_plain_event``;
    - pings come from the engine's ``PingWheel`` rather than a sleeping task
      per connection, and polling's ``poll`` waits under ``asyncio.timeout``.
    """

    websocket = None  # engineio's aiohttp WebSocket wrapper, while frames go straight to it
    transport = None  # and its asyncio transport
    dropping = False  # closed for not keeping up: nothing more is written to it

    async def _websocket_handler(self, ws):
        if self.connected:
            if not await self._upgrade_from_polling(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        transport = ws._sock._writer.transport
        self._go_direct(ws, transport)
        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)
        plain = getattr(self.server, "start_plain_event", None)
        limit = self.server.max_http_buffer_size
        receive = ws._sock.receive  # awaited directly: each layer in between would be held for the connection's life
        try:
            while True:
                try:
                    frame = (await receive()).data
                except BaseException:  # aborted as silent, or cancelled
                    break
                if (type(frame) is not str and type(frame) is not bytes) or len(frame) > limit:
                    break  # closed by the client, a transport error, or too large
                if type(frame) is str and frame[:2] == "42" and plain is not None and plain(self.sid, frame):
                    continue
                try:
                    await self.receive(eio_packet.Packet(encoded_packet=frame))
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    self.server.logger.info("Receive error -- socket is closed")
                    break
                except Exception:
                    self.server.logger.exception("Unknown receive error")
        finally:
            self.websocket = self.transport = None
            try:
                self.server.flush(transport)  # what was sent leaves before the closing frame
                await ws.close()
            finally:
                await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def _go_direct(self, ws, transport) -> None:
        """Write what was queued during the upgrade, then send straight to
        ``transport`` from now on (no await in between: order is kept)."""
        queue = self.queue
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                self._write(transport, pkt)
        self.websocket, self.transport = ws, transport

    async def send(self, pkt):
        transport = self.transport
        if transport is None:  # long-polling, or mid-upgrade: the queue
            return await super().send(pkt)
        if await self.check_ping_timeout():
            self._write(transport, pkt)

    async def close(self, wait=True, abort=False, reason=None):
        """Engine.IO's; on WebSocket, a CLOSE packet sent to the client is followed
        by the WebSocket's own closing handshake, as Engine.IO servers do."""
        ws, closing = self.websocket, self.closing
        await super().close(wait=wait, abort=abort, reason=reason)
        if ws is not None and not abort and not closing and self.websocket is ws:
            self.server.flush(self.transport)
            in_background(ws.close())

    def _write(self, transport, pkt) -> None:
        encoded = pkt.encode()
        if type(encoded) is str:
            self.write_frame(transport, websocket_frame(encoded.encode()))
        else:
            self.write_frame(transport, websocket_frame(encoded, BINARY))

    def write_frame(self, transport, frame: bytes) -> None:
        """Hand one frame to ``transport``, or drop a connection that cannot keep up."""
        if self.dropping or transport.is_closing():
            return  # the client is gone; the reader ends the session
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            self.drop(f"{MAX_BUFFERED} bytes unsent")
            return
        self.server.write_soon(transport, frame)

    def drop(self, why: str) -> None:
        """Disconnect a connection that cannot keep up; its client reconnects and catches up."""
        self.dropping = True  # write and queue nothing more for it
        log.warning("closing connection %s: %s, it cannot keep up", self.sid, why)
        transport = self.transport
        if transport is not None:
            transport.abort()  # drop what is buffered; the reader then closes the session
            return
        in_background(self.close(wait=False, abort=True, reason="slow client"))

    def direct_transport(self):
        """The transport to hand frames to (``write_frame``), or ``None`` to use
        the queue. ``write_frame`` itself skips a dropped connection or a
        transport that is closing."""
        return None if self.closing else self.transport

    async def _upgrade_from_polling(self, ws) -> bool:
        """Engine.IO's probe handshake (``2probe`` / ``3probe``, then ``5``)."""
        limit = self.server.max_http_buffer_size

        async def next_frame():
            data = await ws.wait()
            if data and len(data) > limit:
                raise ValueError("packet is too large")
            return data

        self.upgrading = True  # hold packet sends during the upgrade
        try:
            pkt = eio_packet.Packet(encoded_packet=await next_frame())
        except OSError:
            return False
        if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return False
        await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        await self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # end the pending poll
        try:
            pkt = eio_packet.Packet(encoded_packet=await next_frame())
        except OSError:
            self.upgrading = False
            return False
        if pkt.packet_type != eio_packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet", self.sid)
            self.upgrading = False
            return False
        self.upgraded = True
        self.upgrading = False
        return True

    async def poll(self):
        """Engine.IO's ``poll`` (long-polling), waiting under ``asyncio.timeout``
        instead of a task and ``asyncio.wait_for``."""
        queue = self.queue
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                packets = [await queue.get()]
        except (TimeoutError, asyncio.CancelledError):
            raise eio_exceptions.QueueEmpty() from None
        queue.task_done()
        if packets == [None]:
            return []
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    def schedule_ping(self):
        if self.last_ping:  # the previous ping was answered (or this is the first)
            self.last_ping = None
            self.server.ping_wheel.add(self)

    async def check_ping_timeout(self):
        alive = await super().check_ping_timeout()
        if not alive and self.transport is not None:
            self.transport.abort()  # ends the reader
        return alive


_background: set[asyncio.Task] = set()


def in_background(coro) -> asyncio.Task:
    """Run ``coro`` as a task that stays referenced until it ends; an error it
    ends with is logged."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
