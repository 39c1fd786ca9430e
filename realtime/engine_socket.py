"""``FastSocket``: one Engine.IO connection (see its docstring)."""

from __future__ import annotations

import asyncio
import logging

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

from .background import in_background
from .websocket_frames import BINARY, websocket_frame

log = logging.getLogger(__name__)

MAX_BUFFERED = 1 << 20  # bytes unsent to one connection before it is dropped


class FastSocket(engineio.async_socket.AsyncSocket):
    """An Engine.IO socket that, once on WebSocket, writes its packets straight
    to the transport, and that waits without a task per wake-up.

    ``_websocket_handler`` is Engine.IO's own (upgrade probe, then a reader
    loop), except that:

    - there is no writer task: once the WebSocket is up, what was queued
      meanwhile is written, and from then on ``send`` writes each packet
      through ``FastEngineServer.write_soon``; the queue serves long-polling only;
    - the reader waits for each frame without the task and ``asyncio.wait_for``
      Engine.IO adds per frame, and with no timeout: a client that stopped
      answering pings has its transport aborted by ``check_ping_timeout``
      (Engine.IO's service task calls it for every connection);
    - plain client events go straight to ``FastSocketServer.start_plain_event``;
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
