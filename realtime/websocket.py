"""``WebSocketConnection``: a WebSocket that aiohttp hands over once the upgrade is accepted.

aiohttp answers the HTTP request (routing, middlewares, the Engine.IO checks
and the application's handshake); ``take_over`` then writes the 101 itself and
moves the TCP transport to a ``WebSocketConnection``, an ``asyncio.Protocol``
with no task: frames are parsed by aiohttp's own (compiled) reader as bytes
arrive and each message is handed to a callback in the same call. aiohttp's
request, handler, WebSocketResponse, queue and the two tasks it keeps per
connection are freed at once, instead of being held for the connection's whole
life (most of the 12 KB per idle connection this saved), and an inbound frame no longer wakes a
task to be read.

Writing stays where it was (``FastEngineServer.write_soon``): frames are built
by ``websocket_frames`` and written to the transport.

What the connection does on its own, as RFC 6455 asks: it answers a ping with a
pong, a close frame with a close frame (then closes the TCP connection), and
closes with 1002, 1007 or 1009 on a protocol error, invalid UTF-8 or a message
over its size limit. ``close()`` starts the closing handshake; a client that
does not answer it within ``CLOSE_TIMEOUT_S`` is cut off.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.http_websocket import WebSocketError, WSCloseCode

from .websocket_frames import CLOSE, PONG, websocket_frame

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake waits for the client's close frame
FAIL_LINGER_S = 1.0  # how long a connection closed for a protocol error drains what the client still sends
TEXT, BINARY = WSMsgType.TEXT, WSMsgType.BINARY


class Receiver(Protocol):
    """Who a connection hands its messages and its end to."""

    def websocket_message(self, data: Any) -> None:
        """Each text (``str``) or binary (``bytes``) message, in order."""

    def websocket_closed(self) -> None:
        """Once, when the TCP connection is gone."""


class Callbacks:
    """A ``Receiver`` made of two functions."""

    __slots__ = ("websocket_closed", "websocket_message")

    def __init__(self, message: Callable[[Any], None], closed: Callable[[], None]) -> None:
        self.websocket_message, self.websocket_closed = message, closed


def close_frame(code: int) -> bytes:
    """A close frame carrying ``code`` and no reason."""
    return websocket_frame(code.to_bytes(2, "big"), CLOSE)


class _Nobody:
    """The receiver of a connection not set up yet, or detached: it ignores everything."""

    def websocket_message(self, data: Any) -> None:
        pass

    def websocket_closed(self) -> None:
        pass


_NOBODY = _Nobody()


class _Messages(WebSocketDataQueue):
    """Where aiohttp's reader puts each complete message: straight to the connection.

    Nothing is ever queued here, so the queue's own ``__init__`` (a buffer, two of its
    methods, the protocol to pause) is not run: its fields keep their zero values, the
    reader reads only its size and limit (0 and 0: never over the limit, so the reader never
    stalls), and this is one object per connection instead of five for the collector to walk.
    aiohttp is pinned exactly for this (setup.cfg)."""

    __slots__ = ("connection",)
    # What aiohttp's pure-Python reader reads here (``AIOHTTP_NO_EXTENSIONS``, or no compiled
    # wheel); the compiled one reads the C fields, which hold the same zeros.
    _size = _limit = 0
    _stalled_reader = None

    def __init__(self, connection: WebSocketConnection) -> None:  # no super().__init__(): see above
        self.connection = connection

    def feed_data(self, data: Any, size: int) -> None:
        self.connection.message(data)

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self.connection.failed(exc)

    def feed_eof(self) -> None:
        pass


class _Closed:
    """The reader of a connection that is gone: nothing is read any more."""

    def feed_data(self, data: bytes) -> None:
        pass


_CLOSED = _Closed()


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket connection after the handshake (see the module docstring).

    ``receiver.websocket_message`` gets each text or binary message in order. It
    may call ``hold()``: later messages then wait (and the socket is not read) until
    ``release()``. ``receiver.websocket_closed`` is called once, when the TCP
    connection is gone. Nothing gets either until the receiver is set (``take_over``'s
    ``ready``), or after ``detach()``. One receiver object, not two bound methods: two
    objects fewer per connection for the garbage collector to walk.
    """

    transport: asyncio.Transport

    def __init__(self, max_size: int) -> None:
        """``max_size``: a message of this many bytes or more is refused (1009)."""
        self.receiver: Receiver = _NOBODY
        self.held: collections.deque[Any] | None = None
        self.close_sent = False
        self.closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._reader: WebSocketReader | _Closed = WebSocketReader(_Messages(self), max_size, False, True)

    def detach(self) -> None:
        """Ignore what comes from now on, and the end of the connection."""
        self.receiver = _NOBODY

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def eof_received(self) -> bool:
        return False  # the client closed its side without a close frame: close ours too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.held = None
        # The reader and its queue point back here, and so may the receiver: without them,
        # all of this connection is freed by reference counting as soon as the last
        # reference goes, and no collection of the garbage collector has to find it.
        self._reader = _CLOSED
        receiver, self.receiver = self.receiver, _NOBODY
        receiver.websocket_closed()

    # -- messages --

    def message(self, msg: Any) -> None:
        """A message from the reader, in order."""
        if self.held is not None:
            self.held.append(msg)
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        kind = msg[0]
        if kind is TEXT or kind is BINARY:
            if not self.close_sent:
                self.receiver.websocket_message(msg[1])
        elif kind is WSMsgType.CLOSE:
            if not self.close_sent:  # the client starts the closing handshake: answer it
                self.close_sent = True
                self.transport.write(close_frame(WSCloseCode.OK))
            self.transport.close()
        elif kind is WSMsgType.PING:
            if not self.close_sent:
                self.transport.write(websocket_frame(msg[1], PONG))

    def failed(self, exc: BaseException) -> None:
        """The reader found a protocol error: a close frame with its code. Nothing
        more can be parsed, the client's answer included: what comes is read and
        dropped (so that closing does not reset the connection under the close
        frame), and the TCP connection is closed ``FAIL_LINGER_S`` later, or when
        the client closes its side."""
        code = exc.code if isinstance(exc, WebSocketError) else WSCloseCode.PROTOCOL_ERROR
        log.debug("closing a WebSocket: %s", exc)
        self.close(code)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = asyncio.get_running_loop().call_later(FAIL_LINGER_S, self.transport.close)

    def hold(self) -> None:
        """Keep later messages (and stop reading) until ``release``."""
        if self.held is None:
            self.held = collections.deque()
            if not self.closed:
                self.transport.pause_reading()

    def release(self) -> None:
        """Hand over the messages that waited, until one holds again, then read on."""
        held = self.held
        while held:
            self.held = None
            msg = held.popleft()
            self._dispatch(msg)
            if self.held is not None:  # held again: keep the rest, in order, in front
                self.held.extendleft(reversed(held))
                return
            self.held = held
        self.held = None
        if not self.closed and not self.transport.is_reading():
            self.transport.resume_reading()

    # -- closing --

    def close(self, code: int = WSCloseCode.OK) -> None:
        """Start the closing handshake: a close frame now, the TCP connection closed
        when the client answers, or after ``CLOSE_TIMEOUT_S`` if it does not."""
        if self.closed or self.close_sent:
            return
        self.close_sent = True
        self.held = None
        transport = self.transport
        transport.write(close_frame(code))
        if not transport.is_reading():
            transport.resume_reading()  # to see the client's answer
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)


class TakenOver(web.StreamResponse):
    """What the aiohttp handler returns for a connection it handed over: nothing
    more is written (the 101 is already out), and the access log says 101."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def upgrade_head(request: web.Request) -> bytes | None:
    """The 101 response to ``request``, as aiohttp would answer it (without
    permessage-deflate), or ``None`` when it is not a WebSocket upgrade aiohttp
    would accept (method, headers, key, version)."""
    try:
        headers = web.WebSocketResponse(compress=False)._handshake(request)[0]
    except web.HTTPException:
        return None
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n".encode()


def take_over(request: web.Request, head: bytes, connection: WebSocketConnection,
              ready: Callable[[WebSocketConnection], None]) -> TakenOver:
    """Answer ``request`` with ``head`` (its ``upgrade_head``) and move its TCP
    connection from aiohttp to ``connection``; ``ready(connection)`` then sets it
    up, before any byte is read. No await: nothing can come in between. The
    handler returns what this returns."""
    transport = request.transport
    protocol = request.protocol
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client left before the upgrade")
    transport.write(head)
    # Bytes the client sent after its request (it should wait for the 101, but may not).
    early: bytes = getattr(protocol, "_message_tail", b"")
    # aiohttp lets go of the connection as if it had been lost, without closing it:
    # its handler, request and keep-alive timer are released, its server forgets it.
    protocol.transport = None
    transport.set_protocol(connection)
    protocol.connection_lost(None)
    connection.connection_made(transport)
    ready(connection)
    if not transport.is_reading():
        transport.resume_reading()
    if early:
        connection.data_received(early)
    return TakenOver()
