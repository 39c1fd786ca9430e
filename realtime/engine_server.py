"""Engine.IO, made lighter per connection and per frame, speaking v4 as the reference server does.

``FastEngineServer`` is python-engineio's ``AsyncServer`` with these changes:

- a WebSocket connection, once its upgrade is accepted, is taken from aiohttp
  (``realtime.websocket``): no coroutine, task or aiohttp object stays alive
  for it, and each inbound message is handled in the call that parsed it;
  a session's environ keeps no reference to the aiohttp request
  (``session_environ``);
- each connection's outgoing queue is a ``LightQueue`` (an idle
  ``asyncio.Queue`` holds four 64-slot deque blocks, about 2.5 KB);
- one ``PingWheel`` task pings every connection, instead of a sleeping task,
  timer and future per connection, and the service task that ends connections
  whose ping went unanswered checks a slice of them every half second instead
  of waiting (a timer and a task) between any two of them;
- WebSockets are accepted without permessage-deflate: browsers offer it, and
  a negotiated connection that has sent anything holds a zlib compressor of
  about 100 KB for its whole life, and pays CPU for every frame;
- frames for WebSocket connections are written to their transports directly,
  and, while the server is busy, the frames one transport gets in one loop
  iteration leave as one write (``write_soon``): no writer task and queue per
  connection; each frame stays a frame of its own (a write carries whole
  frames, never merges them). While it is not busy a frame is written at once,
  so a broadcast's first recipients do not wait for its last to be queued;
- HTTP requests are answered as the reference Node.js server answers them
  where python-engineio differs (``handle_request``): the announced
  ``pingInterval`` in exact milliseconds; 400 for a missing or unknown
  ``transport`` and for a method other than GET, POST and OPTIONS; a POST
  answered ``ok``, its body read up to ``maxPayload`` bytes (with or without
  ``Content-Length``) and 413 past it, 400 for an invalid payload, either
  ending the session at once; a second concurrent poll ends the session (the
  first gets a CLOSE packet); a poll after the ping timeout is 400; a second
  WebSocket for an upgraded (or upgrading) session is accepted, then closed;
  a session the server closes waits at most ``pingInterval + pingTimeout``
  for its polling client to fetch the CLOSE packet (python-engineio: forever).
- every inbound frame (WebSocket) or packet (polling) counts toward a
  per-connection budget (``set_frame_budget``); a connection over it is closed.

A connection that cannot keep up (``MAX_BUFFERED`` bytes unsent) is closed
rather than buffered without bound; standard clients reconnect by themselves.

``FastSocket`` is the per-connection socket (see its docstring).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import engineio
from aiohttp import web
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp

from .engine_socket import BUDGET_WINDOW_S, UPGRADE_TIMEOUT_S, FastSocket, decode_packet
from .light_queue import LightQueue
from .ping_wheel import PingWheel
from .websocket import WebSocketConnection, take_over, upgrade_head
from .websocket_frames import write_frames

if TYPE_CHECKING:
    from asyncio import Transport

Environ = dict[str, Any]
Response = dict[str, Any]  # Engine.IO's response description: status, headers, response


def _payload_packets(body: bytes) -> list[eio_packet.Packet]:
    """The packets of a polling POST body (``\\x1e``-separated; JSONP's ``d=``
    form too), with no cap on their number; ``ValueError`` for anything that
    is not a payload of valid Engine.IO packets."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if text.startswith("d="):
        text = urllib.parse.parse_qs(text).get("d", [""])[0]
    packets = []
    for encoded in text.split("\x1e"):
        pkt = decode_packet(encoded)
        if not 0 <= pkt.packet_type <= eio_packet.NOOP:
            raise ValueError(f"unknown packet type {pkt.packet_type}")
        packets.append(pkt)
    return packets


log = logging.getLogger(__name__)

QUIET_FLUSHES = 3  # see FastEngineServer._flush

SWEEP_S = 0.5  # how often the service task checks a slice of the connections


class FastEngineServer(engineio.AsyncServer):
    start_plain_event = None  # set by FastSocketServer: what FastSocket's reader hands plain events to
    frame_budget = 0  # inbound frames per connection per BUDGET_WINDOW_S; 0: no budget
    upgrade_timeout = UPGRADE_TIMEOUT_S  # seconds an upgrading WebSocket may take for its probe and UPGRADE
    session_headers: frozenset[str] | None = None  # environ HTTP_ keys a session keeps (None: all)
    _async: dict[str, Any]
    start_service_task: bool
    sockets: dict[str, FastSocket]
    ping_wheel: PingWheel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cookie:
            raise ValueError("FastEngineServer does not set a session cookie")
        self.ping_wheel = PingWheel(self)
        # Per transport written to in this loop iteration, the frames that wait for its end.
        self._pending: dict[Transport, list[bytes]] = {}
        self._flush_scheduled = False
        self._quiet_flushes = 0  # iterations in a row that had next to nothing to put together
        self._direct = True  # ... enough of them: each transport's first frame goes at once
        self._sweep_size = 1

    def set_frame_budget(self, per_s: float) -> None:
        """Let each connection send ``per_s`` frames a second on average over
        ``BUDGET_WINDOW_S`` (0: no limit); one over it is closed."""
        self.frame_budget = int(per_s * BUDGET_WINDOW_S) if per_s > 0 else 0

    def attach(self, app: web.Application, engineio_path: str = "engine.io") -> None:
        """Engine.IO's routes, plus one for every other method: the reference
        server answers those 400, not aiohttp's 405."""
        super().attach(app, engineio_path)
        app.router.add_route("*", f"/{engineio_path.strip('/')}/", self.handle_request)

    def write_soon(self, transport: Transport, frame: bytes) -> None:
        """Write ``frame`` to ``transport``: at the end of this loop iteration,
        together with the other frames it gets meanwhile (one write); or, when
        the last iteration found next to nothing to put together, the first
        frame of the iteration at once and the others at its end.

        Every frame to a WebSocket connection goes through here, so frames keep
        the order in which they were handed over.
        """
        pending = self._pending.get(transport)
        if pending is not None:
            pending.append(frame)
            return
        if self._direct:
            self._pending[transport] = []
            if not transport.is_closing():
                transport.write(frame)
        else:
            self._pending[transport] = [frame]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def discard_pending(self, transport: Transport) -> None:
        """Forget what waits for a transport that is gone."""
        self._pending.pop(transport, None)

    def flush(self, transport: Transport) -> None:
        """Write what waits for ``transport`` now (before its closing frame)."""
        frames = self._pending.pop(transport, None)
        if frames:
            write_frames(transport, frames)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        waited = 0
        for transport, frames in pending.items():
            if frames:
                waited += len(frames)
                write_frames(transport, frames)
        # Frames beyond each transport's first: what one write per transport saved. Busy
        # (several events' frames to the same connections) when they pass a quarter of the
        # transports: from the next iteration on every frame is put together, until
        # QUIET_FLUSHES iterations in a row had no more than one send's broadcast and its ack.
        extra = waited if self._direct else waited - len(pending)
        if extra <= max(1, len(pending) // 4):
            self._quiet_flushes += 1
            self._direct = self._quiet_flushes >= QUIET_FLUSHES
        else:
            self._quiet_flushes = 0
            self._direct = False

    def create_queue(self, *args: Any, **kwargs: Any) -> LightQueue:
        return LightQueue()

    def _open_packet(self, sid: str, upgrades: list[str]) -> eio_packet.Packet:
        """The handshake, with ``pingInterval`` in exact milliseconds."""
        return eio_packet.Packet(eio_packet.OPEN, {
            "sid": sid,
            "upgrades": upgrades,
            "pingTimeout": round(self.ping_timeout * 1000),
            "pingInterval": round((self.ping_interval + self.ping_interval_grace_period) * 1000),
            "maxPayload": self.max_http_buffer_size,
        })

    async def _service_task(self) -> None:
        """Engine.IO's service task without a wait per connection: python-engineio's
        visits each connection once per ``ping_timeout``, sleeping between any two of
        them (a timer and a task each: a thousand a second at 20,000 connections).
        This one wakes every ``SWEEP_S`` (or a quarter of ``ping_timeout``, if that
        is shorter) and checks the slice of the connections that spreads a visit to
        each over ``ping_timeout`` likewise: a ping left unanswered for longer ends
        its connection, and a closed session is forgotten."""
        self.service_task_event = event = self.create_event()
        batch: list[FastSocket] = []
        while not event.is_set():
            period = min(SWEEP_S, self.ping_timeout / 4)
            try:
                async with asyncio.timeout(period):  # not wait_for: on 3.11 it makes a task per wait
                    await event.wait()
                break
            except TimeoutError:
                pass
            try:
                if not batch:
                    batch = list(self.sockets.values())
                    self._sweep_size = math.ceil(len(batch) / max(1.0, self.ping_timeout / period))
                visit, batch = batch[-self._sweep_size:], batch[:-self._sweep_size]
                now = time.time()
                for socket in visit:
                    if socket.closed:
                        if self.sockets.get(socket.sid) is socket:
                            del self.sockets[socket.sid]
                    elif not socket.closing and socket.last_ping and now - socket.last_ping > self.ping_timeout:
                        await socket.check_ping_timeout()
            except Exception:
                log.exception("service task error")

    def _start_service_task(self) -> None:
        if self.start_service_task:
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        """Engine.IO's entry point: every request on its path, answered as the
        reference server answers it (see the module docstring)."""
        query = request.query
        environ: Environ = eio_aiohttp.translate_request(request)
        environ["REMOTE_ADDR"] = request.remote or ""  # Engine.IO's is always 127.0.0.1 under aiohttp
        origin = environ.get("HTTP_ORIGIN")
        if origin and self.cors_allowed_origins != []:
            allowed = self._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                self._log_error_once(origin + " is not an accepted origin.", "bad-origin")
                return await self._respond(self._bad_request(origin + " is not an accepted origin."), environ)
        transport = query.get("transport", "")
        if transport not in self.transports:
            self._log_error_once("Invalid transport", "bad-transport")
            return await self._respond(self._bad_request("Invalid transport"), environ)
        sid = query.get("sid")
        if sid is None and query.get("EIO") != "4":
            self._log_error_once("The client is using an unsupported version of the Socket.IO or Engine.IO "
                                 "protocols", "bad-version")
            return await self._respond(self._bad_request("The client is using an unsupported version of the "
                                                         "Socket.IO or Engine.IO protocols"), environ)
        jsonp_index = None
        if "j" in query:
            try:
                jsonp_index = int(query["j"])
            except ValueError:
                self._log_error_once("Invalid JSONP index number", "bad-jsonp-index")
                return await self._respond(self._bad_request("Invalid JSONP index number"), environ)
        method = request.method
        answer: Response | web.StreamResponse
        if method == "GET":
            answer = await self._get(environ, transport, sid, jsonp_index)
        elif method == "POST":
            answer = await self._post(request, environ, sid, jsonp_index)
        elif method == "OPTIONS":
            answer = self._ok()
        else:
            self._log_error_once(f"Method {method} not supported", "bad-method")
            answer = self._bad_request("Bad request method")
        if isinstance(answer, web.StreamResponse):
            return answer
        if self.http_compression and len(answer["response"]) >= self.compression_threshold:
            encodings = [e.split(";")[0].strip() for e in environ.get("HTTP_ACCEPT_ENCODING", "").split(",")]
            for encoding in encodings:
                if encoding in self.compression_methods:
                    answer["response"] = getattr(self, "_" + encoding)(answer["response"])
                    answer["headers"] += [("Content-Encoding", encoding)]
                    break
        return await self._respond(answer, environ)

    async def _respond(self, answer: Response, environ: Environ) -> web.StreamResponse:
        response: web.StreamResponse = await self._make_response(answer, environ)
        return response

    def _socket(self, sid: str | None) -> FastSocket | None:
        """The open session ``sid``, or ``None``."""
        socket = self.sockets.get(sid) if sid is not None else None
        return None if socket is None or socket.closed else socket

    def _forget_if_closed(self, socket: FastSocket) -> None:
        if socket.closed and self.sockets.get(socket.sid) is socket:
            del self.sockets[socket.sid]

    def _bad_upgrade(self) -> Response:
        """The answer to a WebSocket request without a valid upgrade."""
        self._log_error_once("Invalid websocket upgrade", "bad-upgrade")
        return self._bad_request("Invalid websocket upgrade")

    async def _get(self, environ: Environ, transport: str, sid: str | None,
                   jsonp_index: int | None) -> Response | web.StreamResponse:
        upgrade = environ.get("HTTP_UPGRADE", "").lower()
        if sid is None:
            if transport == "polling":
                return await self._connect_polling(environ, jsonp_index)
            if upgrade == "websocket":
                return await self._connect_websocket(environ)
            return self._bad_upgrade()
        socket = self.sockets.get(sid)
        if socket is not None and socket.closed:  # closed by the server: the next poll gets what waits
            self._forget_if_closed(socket)
            if transport == "polling" and not socket.upgraded and not socket.queue.empty():
                return self._ok(socket.take_queued(), jsonp_index=jsonp_index)
            socket = None
        if socket is None:
            self._log_error_once(f"Invalid session {sid}", "bad-sid")
            return self._bad_request(f"Invalid session {sid}")
        if transport == "websocket":
            if upgrade != "websocket":
                self._log_error_once(f"Invalid transport for session {sid}", "bad-transport")
                return self._bad_request("Invalid transport")
            if socket.upgraded or socket.upgrading:
                return await self._accept_and_close(environ)
            request: web.Request = environ["aiohttp.request"]
            head = upgrade_head(request)
            if head is None:
                return self._bad_upgrade()
            return take_over(request, head, self._websocket_connection(), socket.upgrade_to)
        if socket.upgraded:
            self._log_error_once(f"Unexpected HTTP request for session {sid}", "unexpected-http")
            return self._bad_request("Unexpected HTTP request")
        if socket.polling:  # two polls at once: the reference server ends the session
            self._log_error_once(f"Overlapping polls for session {sid}", "overlap")
            await socket.close(wait=False, reason=self.reason.TRANSPORT_ERROR)  # the first poll gets CLOSE
            return self._bad_request("Overlapping polls")
        if not await socket.check_ping_timeout():
            self._forget_if_closed(socket)
            return self._bad_request("Ping timeout")
        try:
            packets = await socket.handle_poll()
        except eio_exceptions.QueueEmpty:
            self._forget_if_closed(socket)
            return self._bad_request()
        self._forget_if_closed(socket)
        answer: Response = self._ok(packets, jsonp_index=jsonp_index)
        return answer

    async def _post(self, request: web.Request, environ: Environ, sid: str | None,
                    jsonp_index: int | None) -> Response:
        socket = self._socket(sid)
        if socket is None:
            self._log_error_once(f"Invalid session {sid}", "bad-sid")
            return self._bad_request(f"Invalid session {sid}")
        if socket.upgraded:
            self._log_error_once(f"Unexpected HTTP request for session {sid}", "unexpected-http")
            return self._bad_request("Unexpected HTTP request")
        if socket.posting:  # as the reference server: a second POST while one is read ends the session
            self._log_error_once(f"Overlapping POST for session {sid}", "post-overlap")
            await self._end(socket)
            return self._bad_request("Overlapping POST")
        socket.posting = True
        try:
            return await self._receive_post(socket, sid, request)
        finally:
            socket.posting = False

    async def _receive_post(self, socket: FastSocket, sid: str | None, request: web.Request) -> Response:
        """Read a POST's packets (at most ``maxPayload`` bytes) and hand them to ``socket``."""
        try:
            async with asyncio.timeout(self.ping_timeout):
                body = await self._read_body(request)
        except TimeoutError:
            await self._end(socket)
            return {"status": "408 REQUEST TIMEOUT", "headers": [("Content-Type", "text/plain")],
                    "response": b"Request Timeout"}
        if body is None:
            await self._end(socket)
            return {"status": "413 PAYLOAD TOO LARGE", "headers": [("Content-Type", "text/plain")],
                    "response": b"Payload Too Large"}
        try:
            packets = _payload_packets(body)
        except ValueError:
            self._log_error_once(f"Invalid payload for session {sid}", "bad-payload")
            await self._end(socket)
            return self._bad_request("Invalid payload")
        if not socket.spend(len(packets)):
            await self._end(socket)
            return {"status": "429 TOO MANY REQUESTS", "headers": [("Content-Type", "text/plain")],
                    "response": b"Too Many Requests"}
        for pkt in packets:
            try:
                await socket.receive(pkt)
            except eio_exceptions.UnknownPacketError:  # a PING: the heartbeat goes the other way
                await self._end(socket)
                return self._bad_request("Invalid packet")
            except Exception:
                self.logger.exception("post request handler error")
            if socket.closed:
                break
        self._forget_if_closed(socket)
        return {"status": "200 OK", "headers": [("Content-Type", "text/html")], "response": b"ok"}

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The request body, or ``None`` past ``maxPayload`` bytes (then not
        read further): with or without ``Content-Length``, chunked too."""
        limit = self.max_http_buffer_size
        length = request.content_length
        if length is not None and length > limit:
            return None
        body = bytearray()
        while True:
            chunk = await request.content.read(limit + 1 - len(body))
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > limit:
                return None

    async def _end(self, socket: FastSocket) -> None:
        """End a session for a bad request: a waiting poll gets the CLOSE packet."""
        await socket.close(wait=False, reason=self.reason.TRANSPORT_ERROR)
        self._forget_if_closed(socket)

    async def _accept_and_close(self, environ: Environ) -> web.WebSocketResponse:
        """A WebSocket for a session already on (or moving to) WebSocket: accepted,
        then closed, as the reference server does."""
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(environ["aiohttp.request"])
        await ws.close()
        return ws

    async def _connect_polling(self, environ: Environ, jsonp_index: int | None) -> Response:
        """Engine.IO's ``_handle_connect`` for long-polling, with a ``FastSocket``
        and the handshake in exact milliseconds."""
        self._start_service_task()
        sid = self.generate_id()
        socket = self.sockets[sid] = FastSocket(self, sid)
        upgrades = ["websocket"] if self.allow_upgrades and "websocket" in self.transports else []
        await socket.send(self._open_packet(sid, upgrades))
        accepted = await self._trigger_event("connect", sid, self.session_environ(environ), run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            refused: Response = self._unauthorized(accepted or None)
            return refused
        socket.schedule_ping()
        socket.connected = True
        try:
            packets = await socket.poll()
        except eio_exceptions.QueueEmpty:
            bad: Response = self._bad_request()
            return bad
        answer: Response = self._ok(packets, jsonp_index=jsonp_index)
        return answer

    async def _connect_websocket(self, environ: Environ) -> Response | web.StreamResponse:
        """A new WebSocket connection (``GET ?EIO=4&transport=websocket`` with no
        ``sid``, the commonest request): the application's handshake, then the
        TCP connection is handed from aiohttp to a ``WebSocketConnection``."""
        request: web.Request = environ["aiohttp.request"]
        head = upgrade_head(request)
        if head is None:
            return self._bad_upgrade()
        self._start_service_task()
        sid = self.generate_id()
        socket = self.sockets[sid] = FastSocket(self, sid)
        await socket.send(self._open_packet(sid, []))
        accepted = await self._trigger_event("connect", sid, self.session_environ(environ), run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            refused: Response = self._unauthorized(accepted or None)
            return refused
        socket.schedule_ping()
        try:
            return take_over(request, head, self._websocket_connection(), socket.on_websocket)
        except ConnectionResetError:  # the client left during the handshake
            await socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)
            self.sockets.pop(sid, None)
            return web.Response(status=400)

    def _websocket_connection(self) -> WebSocketConnection:
        # maxPayload is inclusive; the connection refuses a message of its limit or more (1009),
        # so no message handed to FastSocket is longer than maxPayload.
        return WebSocketConnection(self.max_http_buffer_size + 1)

    def session_environ(self, environ: Environ) -> Environ:
        """What a session keeps of its handshake request's environ: the WSGI keys,
        ``REMOTE_ADDR`` (the peer's address), and the ``HTTP_`` headers named in
        ``session_headers`` (all of them when it is ``None``); not the aiohttp
        request, which is freed once the connection is set up."""
        keep = self.session_headers
        return {key: value for key, value in environ.items()
                if key != "aiohttp.request" and key != "wsgi.input"
                and (keep is None or not key.startswith("HTTP_") or key in keep)}

    def _unauthorized(self, message: Any = None) -> dict[str, Any]:
        """Engine.IO's refusal of a handshake: 401, or 403 for the reference server's
        "Forbidden" (code 4), which the per-address cap of not-signed-in connections answers."""
        response: dict[str, Any] = super()._unauthorized(message)
        if isinstance(message, dict) and message.get("code") == 4:
            response["status"] = "403 FORBIDDEN"
        return response

    async def shutdown(self) -> None:
        await self.ping_wheel.close()
        await super().shutdown()
