"""``FastSocket``: one Engine.IO connection (see its docstring)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

from .background import in_background
from .light_queue import LightQueue
from .websocket import Callbacks, WebSocketConnection
from .websocket_frames import BINARY, websocket_frame

if TYPE_CHECKING:
    from asyncio import Transport

    from .engine_server import FastEngineServer

log = logging.getLogger(__name__)

MAX_BUFFERED = 1 << 20  # bytes unsent to one connection before it is dropped
BUDGET_WINDOW_S = 10.0  # the inbound frame budget is counted over windows this long
UNLIMITED = sys.maxsize
PROBE_FRAME = websocket_frame(eio_packet.Packet(eio_packet.PONG, data="probe").encode().encode())
UPGRADE_TIMEOUT_S = 10.0  # for the probe and UPGRADE packets of an upgrade, as the reference server's upgradeTimeout


def decode_packet(encoded: str | bytes) -> eio_packet.Packet:
    """One Engine.IO packet; ``ValueError`` for anything that is not one, including
    JSON nested too deep for Python's parser (which raises ``RecursionError``)."""
    try:
        return eio_packet.Packet(encoded_packet=encoded)
    except RecursionError:
        raise ValueError("packet nested too deep") from None

class FastSocket(engineio.async_socket.AsyncSocket):
    """An Engine.IO socket that, once on WebSocket, writes its packets straight
    to the transport, and that waits without a task per wake-up.

    Its WebSocket is a ``WebSocketConnection`` (no task, no aiohttp objects
    kept): ``on_websocket`` for a session opened on WebSocket, ``upgrade_to``
    for one moving from long-polling (Engine.IO's probe handshake). Then:

    - there is no writer task: once the WebSocket is up, what was queued
      meanwhile is written, and from then on ``send`` writes each packet
      through ``FastEngineServer.write_soon``; the queue serves long-polling only;
    - each inbound message is handled in the call that parsed it
      (``websocket_message``): a pong schedules the next ping, a plain client event
      goes straight to ``FastSocketServer.start_plain_event``, and any other
      packet to a task, the messages after it waiting until it is done;
      a client that stopped answering pings has its transport aborted by
      ``check_ping_timeout`` (the engine's sweep calls it);
    - pings come from the engine's ``PingWheel`` rather than a sleeping task
      per connection, and polling's ``poll`` waits under ``asyncio.timeout``.

    As the reference (Node.js) server does, and python-engineio does not: a
    CLOSE packet or anything that is not a valid Engine.IO packet ends the
    session at once (a client's PING too: in v4 the heartbeat goes from the
    server); a client that sends more frames than its budget is closed.
    """

    server: FastEngineServer
    sid: str
    queue: LightQueue
    connected: bool
    upgraded: bool
    upgrading: bool
    closed: bool
    closing: bool
    last_ping: float | None
    websocket: WebSocketConnection | None = None  # while frames go straight to it
    transport: Transport | None = None  # its asyncio transport
    dropping = False  # closed for not keeping up: nothing more is written to it
    polling = False  # a long-polling GET is waiting for packets
    posting = False  # a polling POST is being read

    def __init__(self, server: FastEngineServer, sid: str) -> None:
        super().__init__(server, sid)
        # Set here, for every socket in the same order, so that instances keep sharing one key table.
        self.frames_left = server.frame_budget or UNLIMITED
        self.budget_since = time.monotonic()

    def spend(self, frames: int) -> bool:
        """Count ``frames`` inbound frames (or polling packets) against the
        connection's budget; ``False`` when it is over it."""
        self.frames_left -= frames
        return self.frames_left >= 0 or self._renew_budget()

    def _renew_budget(self) -> bool:
        """Start a new budget window if the current one is over, else refuse."""
        now = time.monotonic()
        if now - self.budget_since < BUDGET_WINDOW_S:
            log.warning("closing connection %s: over its budget of inbound frames", self.sid)
            return False
        self.budget_since = now
        self.frames_left += self.server.frame_budget or UNLIMITED
        return self.frames_left >= 0

    async def receive(self, pkt: eio_packet.Packet) -> None:
        """Engine.IO's, as the reference server: OPEN, UPGRADE and NOOP are
        ignored, a CLOSE ends a waiting poll with a NOOP, and a PING or an
        unknown type is refused (``UnknownPacketError``: the session ends)."""
        kind = pkt.packet_type
        if kind == eio_packet.MESSAGE:
            await self.server._trigger_event("message", self.sid, pkt.data, run_async=self.server.async_handlers)
        elif kind == eio_packet.PONG:
            self.schedule_ping()
        elif kind == eio_packet.CLOSE:
            if self.polling:
                self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        elif kind not in (eio_packet.OPEN, eio_packet.UPGRADE, eio_packet.NOOP):
            raise eio_exceptions.UnknownPacketError()

    def on_websocket(self, connection: WebSocketConnection) -> None:
        """A new session's WebSocket is up: frames go straight to it from now on."""
        self.connected = True
        self.upgraded = True
        self._go_direct(connection)
        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)

    def upgrade_to(self, connection: WebSocketConnection) -> None:
        """A WebSocket for this polling session: Engine.IO's probe handshake
        (``2probe`` / ``3probe``, then ``5``), each packet within
        ``upgrade_timeout``, then frames go straight to it. As the reference
        server, a NOOP ends the poll only if one is waiting (a poll that comes
        later during the upgrade is answered NOOP at once). A failed upgrade
        closes the WebSocket and leaves the session on polling."""
        self.upgrading = True  # hold packet sends during the upgrade
        loop = asyncio.get_running_loop()
        probed = False

        def fail(why: str) -> None:
            timer.cancel()
            self.server.logger.info("%s: Failed websocket upgrade, %s", self.sid, why)
            self.upgrading = False
            connection.detach()
            connection.close()

        timer = loop.call_later(self.server.upgrade_timeout, fail, "no PING packet in time")

        def on_message(data: str | bytes) -> None:
            nonlocal probed, timer
            try:
                pkt = decode_packet(data)
            except ValueError:
                fail("invalid packet")
                return
            if not probed:
                if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                    fail("no PING packet")
                    return
                probed = True
                connection.transport.write(PROBE_FRAME)
                if self.polling:
                    self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # end the pending poll
                timer.cancel()
                timer = loop.call_later(self.server.upgrade_timeout, fail, "no UPGRADE packet in time")
                return
            if pkt.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                fail("expected UPGRADE packet")
                return
            timer.cancel()
            self.upgraded = True
            self.upgrading = False
            self._go_direct(connection)
            self.server.logger.info("%s: Upgrade to websocket successful", self.sid)

        def on_close() -> None:  # gone during the probe: the session stays on polling
            timer.cancel()
            self.upgrading = False

        connection.receiver = Callbacks(on_message, on_close)

    def _go_direct(self, connection: WebSocketConnection) -> None:
        """Write what was queued during the upgrade, then send straight to the
        connection's transport from now on (no await in between: order is
        kept). A NOOP queued to end a poll is not written: it belongs to polling."""
        transport = connection.transport
        for pkt in self.take_queued():
            if pkt.packet_type != eio_packet.NOOP:
                self._write(transport, pkt)
        if self.polling:  # a poll still waits: end it
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        self.websocket, self.transport = connection, transport
        connection.receiver = self

    def websocket_message(self, frame: str | bytes) -> None:
        """One message from the WebSocket, in order: a pong and a plain event are
        handled here and now; any other packet is handled by a task, and the
        messages after it wait (``hold``) until it is done. The connection has
        refused anything over ``maxPayload`` already."""
        self.frames_left -= 1
        if self.frames_left < 0 and not self._renew_budget():
            self._end_websocket(1008)
            return
        if frame == "3":  # a pong: the next ping is due a ping interval from now
            self.schedule_ping()
            return
        plain = self.server.start_plain_event
        try:
            if type(frame) is str and frame[:2] == "42" and plain is not None and plain(self.sid, frame):
                return
            pkt = decode_packet(frame)
        except ValueError:  # not an Engine.IO packet (bad type, empty, bad base64), or bad JSON
            self.server.logger.info("%s: invalid packet, closing", self.sid)
            self._end_websocket()
            return
        except Exception:  # a fault here, not the client's: the connection ends, the others go on
            log.exception("closing connection %s: its packet could not be handled", self.sid)
            self._end_websocket(1011)
            return
        connection = self.websocket
        if connection is not None:
            connection.hold()
            in_background(self._receive_then_release(pkt, connection))

    async def _receive_then_release(self, pkt: eio_packet.Packet, connection: WebSocketConnection) -> None:
        try:
            await self.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            self.server.logger.info("%s: unexpected packet type, closing", self.sid)
            self._end_websocket()
            return
        except eio_exceptions.SocketIsClosedError:
            self.server.logger.info("Receive error -- socket is closed")
            self._end_websocket()
            return
        except Exception:
            self.server.logger.exception("Unknown receive error")
        if self.closed:  # the client's CLOSE packet
            self._end_websocket()
            return
        connection.release()

    def _end_websocket(self, code: int = 1000) -> None:
        """End the session from the WebSocket's side: what was sent leaves, then
        the closing handshake; the session closes meanwhile."""
        connection = self.websocket
        if connection is not None:
            self.websocket = self.transport = None
            self.server.flush(connection.transport)
            connection.close(code)
        in_background(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE))

    def websocket_closed(self) -> None:
        """The TCP connection is gone: so is the session."""
        connection = self.websocket
        if connection is not None:
            self.websocket = self.transport = None
            self.server.discard_pending(connection.transport)
        if not self.closed:
            in_background(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE))

    async def send(self, pkt: eio_packet.Packet) -> None:
        transport = self.transport
        if transport is None:  # long-polling, or mid-upgrade: the queue
            return await super().send(pkt)
        if await self.check_ping_timeout():
            self._write(transport, pkt)

    async def close(self, wait: bool = True, abort: bool = False, reason: str | None = None) -> None:
        """Engine.IO's; on WebSocket, a CLOSE packet sent to the client is followed
        by the WebSocket's own closing handshake, as Engine.IO servers do. With
        ``wait``, the wait for a polling client to fetch the CLOSE packet lasts
        at most ``pingInterval + pingTimeout`` (Engine.IO's has no end)."""
        ws, closing, was_open = self.websocket, self.closing, not (self.closing or self.closed)
        await super().close(wait=False, abort=abort, reason=reason)
        if wait and was_open:
            await self._drained()
        if abort or closing or ws is None or self.websocket is not ws:  # or the connection already ended
            return
        self.websocket = self.transport = None
        self.server.flush(ws.transport)
        ws.close()

    async def _drained(self) -> None:
        """Wait until the queue has been fetched, for at most ``pingInterval + pingTimeout``."""
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                await self.queue.join()
        except TimeoutError:  # the client is gone: so is the session
            if self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]

    def take_queued(self) -> list[eio_packet.Packet]:
        """The packets waiting in the queue, taken without waiting."""
        packets = []
        queue = self.queue
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                packets.append(pkt)
        return packets

    def _write(self, transport: Transport, pkt: eio_packet.Packet) -> None:
        encoded = pkt.encode()
        if type(encoded) is str:
            self.write_frame(transport, websocket_frame(encoded.encode()))
        else:
            self.write_frame(transport, websocket_frame(encoded, BINARY))

    def write_frame(self, transport: Transport, frame: bytes) -> None:
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

    def direct_transport(self) -> Transport | None:
        """The transport to hand frames to (``write_frame``), or ``None`` to use
        the queue. ``write_frame`` itself skips a dropped connection or a
        transport that is closing."""
        return None if self.closing else self.transport

    async def poll(self) -> list[eio_packet.Packet]:
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

    async def handle_poll(self) -> list[eio_packet.Packet]:
        """A long-polling GET: the packets waiting, or the next ones to come; a
        NOOP at once while upgrading. ``QueueEmpty`` (the session is closed)
        when nothing came for ``pingInterval + pingTimeout``."""
        if self.upgrading:
            return [eio_packet.Packet(eio_packet.NOOP)]
        self.polling = True
        try:
            return await self.poll()
        except eio_exceptions.QueueEmpty:
            await self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise
        finally:
            self.polling = False

    def schedule_ping(self) -> None:
        if self.last_ping:  # the previous ping was answered (or this is the first)
            self.last_ping = None
            self.server.ping_wheel.add(self)

    async def check_ping_timeout(self) -> bool:
        alive: bool = await super().check_ping_timeout()
        if not alive:
            if self.transport is not None:
                self.transport.abort()  # ends the reader
            elif self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]  # as the reference server: a poll now is 400
        return alive
