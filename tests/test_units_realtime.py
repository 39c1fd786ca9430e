"""Unit tests of the transport's parts: the light queue, the ping wheel, the per-client room
index, frame coalescing and the slow-client limits. The asyncio transport under a socket is
a recording stand-in here (the integration tests run real connections)."""

from __future__ import annotations

import asyncio
import logging
import random
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
from engineio import packet as eio_packet

from realtime.background import run_eagerly
from realtime.engine_server import QUIET_FLUSHES, FastEngineServer
from realtime.engine_socket import MAX_BUFFERED, FastSocket
from realtime.light_queue import LightQueue
from realtime.manager import MAX_QUEUED, FastManager
from realtime.ping_wheel import BATCH_S, PING_FRAME, PingWheel
from realtime.socket_server import FastSocketServer
from realtime.websocket_frames import websocket_frame

# -- LightQueue --


async def test_light_queue_is_fifo_and_holds_nothing_while_idle():
    queue = LightQueue()
    assert queue.empty() and queue.qsize() == 0
    for i in range(5):
        queue.put_nowait(i)
    assert queue.qsize() == 5
    assert [await queue.get() for _ in range(5)] == list(range(5))
    assert queue._items is None and queue._getters is None  # no deque kept for an idle connection
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_light_queue_wakes_waiting_getters_in_order():
    queue = LightQueue()
    getters = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for item in "abc":
        queue.put_nowait(item)
    assert await asyncio.gather(*getters) == ["a", "b", "c"]
    assert queue._getters is None


async def test_light_queue_a_cancelled_getter_passes_its_item_on():
    queue = LightQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 2) == "x"
    assert first.cancelled()


async def test_light_queue_join_waits_for_task_done():
    queue = LightQueue()
    await asyncio.wait_for(queue.join(), 1)  # nothing unfinished
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    await queue.get()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    await queue.get()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()


# -- PingWheel --


class _PingedSocket:
    transport = None  # long-polling: pings go through send()

    def __init__(self, sid: str, fail: bool = False) -> None:
        self.sid, self.fail = sid, fail
        self.closing = self.closed = False
        self.last_ping: float | None = None
        self.sent: list[int] = []

    async def send(self, pkt: eio_packet.Packet) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.sent.append(pkt.packet_type)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_ping_wheel_pings_each_socket_after_the_interval_from_one_task():
    wheel = PingWheel(SimpleNamespace(ping_interval=0.5))  # type: ignore[arg-type]
    sockets = [_PingedSocket(f"s{i}") for i in range(4)]
    sockets[1].closing = True
    sockets[2].fail = True  # an error on one does not stop the others
    started = asyncio.get_running_loop().time()
    for socket in sockets:
        wheel.add(socket)
    await _until(lambda: sockets[3].sent)
    assert asyncio.get_running_loop().time() - started >= 0.45  # not before the interval
    assert sockets[0].sent == sockets[3].sent == [eio_packet.PING]
    assert sockets[1].sent == [] and sockets[1].last_ping is None
    assert sockets[0].last_ping is not None
    task = wheel._task
    assert task is not None
    await asyncio.wait_for(task, 1)  # nothing due: the one task has ended
    wheel.add(sockets[0])  # a pong came back: pinged again, by a new task
    await _until(lambda: len(sockets[0].sent) == 2)
    assert sockets[3].sent == [eio_packet.PING]
    await wheel.close()


class _WebSocketPinged(_PingedSocket):
    """On WebSocket: the wheel hands the ping frame to the transport, with the loop's time."""

    def __init__(self, sid: str) -> None:
        super().__init__(sid)
        self.transport = object()  # type: ignore[assignment]
        self.frames: list[tuple[float, bytes]] = []

    def write_frame(self, transport: object, frame: bytes) -> None:
        assert transport is self.transport
        self.frames.append((asyncio.get_running_loop().time(), frame))


async def test_ping_wheel_writes_one_prebuilt_frame_and_batches_pings_that_fall_due_together():
    """Sockets that joined 2 ms apart over 100 ms are pinged in a few wake-ups (at most
    ``BATCH_S`` late each), each with the same ready-made frame ``2``, not a packet each."""
    wheel = PingWheel(SimpleNamespace(ping_interval=0.2))  # type: ignore[arg-type]
    sockets = [_WebSocketPinged(f"w{i}") for i in range(50)]
    loop = asyncio.get_running_loop()
    added = []
    for socket in sockets:
        added.append(loop.time())
        wheel.add(socket)
        await asyncio.sleep(0.002)
    await _until(lambda: all(socket.frames for socket in sockets))
    assert {frame for socket in sockets for _, frame in socket.frames} == {PING_FRAME} == {b"\x81\x012"}
    assert all(socket.sent == [] for socket in sockets)  # no packet was encoded
    times = [socket.frames[0][0] for socket in sockets]
    for at, joined in zip(times, added, strict=True):
        assert joined + 0.2 - 0.005 <= at <= joined + 0.2 + BATCH_S + 0.05
    assert len({round(t, 3) for t in times}) <= 6, sorted(set(times))  # wake-ups, not one per socket
    await wheel.close()


async def test_ping_wheel_close_stops_pending_pings():
    wheel = PingWheel(SimpleNamespace(ping_interval=0.05))  # type: ignore[arg-type]
    socket = _PingedSocket("s")
    wheel.add(socket)
    await wheel.close()
    await asyncio.sleep(0.15)
    assert socket.sent == []


# -- fan-out on a FastSocketServer: room index, coalescing, slow clients --


class _Transport:
    """An asyncio transport that records what is written to it."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.closing = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = self.closing = True


@pytest.fixture
async def sio():
    server = FastSocketServer(async_mode="aiohttp", client_manager=FastManager())
    yield server
    await server.eio.ping_wheel.close()


async def _connect(sio: FastSocketServer, transport: _Transport | None) -> tuple[str, FastSocket]:
    """A connected Socket.IO client whose Engine.IO socket writes to ``transport``
    (``None``: a long-polling one, served from its queue)."""
    eio_sid = sio.eio.generate_id()
    socket = sio.eio.sockets[eio_sid] = FastSocket(sio.eio, eio_sid)
    socket.connected = True
    socket.transport = transport
    sid = await sio.manager.connect(eio_sid, "/")
    return sid, socket


async def test_the_room_index_answers_as_python_socketio_does(sio):
    """A client's rooms come from the index; a disconnect leaves every room
    (upstream scans all rooms of the namespace for it)."""
    upstream = socketio.AsyncManager()
    upstream.set_server(sio)
    ours: FastManager = sio.manager
    rng = random.Random(7)
    sids = []
    for i in range(30):
        sid, eio_sid = f"s{i}", f"e{i}"
        for manager in (ours, upstream):  # as pre_connect does, with a known sid
            manager.basic_enter_room(sid, "/", None, eio_sid=eio_sid)
            manager.basic_enter_room(sid, "/", sid, eio_sid=eio_sid)
        sids.append(sid)
    assert ours.rooms == upstream.rooms
    for _ in range(300):
        sid, room, enter = rng.choice(sids), f"group{rng.randrange(8)}", rng.random() < 0.7
        for manager in (ours, upstream):
            if enter:
                manager.basic_enter_room(sid, "/", room)
            elif room in manager.rooms["/"] and sid in manager.rooms["/"][room]:
                manager.basic_leave_room(sid, "/", room)
    for sid in sids[:10]:
        ours.basic_disconnect(sid, "/")
        upstream.basic_disconnect(sid, "/")
    for sid in sids:
        assert sorted(ours.get_rooms(sid, "/")) == sorted(upstream.get_rooms(sid, "/")), sid
    assert ours.rooms == upstream.rooms
    assert all(ours.get_rooms(sid, "/") == [] for sid in sids[:10])
    assert not any(set(sids[:10]) & set(members) for members in ours.rooms["/"].values())


def _frame(n: int) -> bytes:
    return websocket_frame(f'42["m",{{"seq":{n}}}]'.encode())


async def test_a_quiet_server_writes_at_once_and_a_busy_one_puts_each_iterations_frames_together(sio):
    """Coalescing costs no latency when the server is not busy: a broadcast's first
    recipients get it before its last are handed theirs. Once one iteration had several
    frames for the same connections, each connection's frames of an iteration leave as
    one write, in order, until QUIET_FLUSHES iterations in a row had next to nothing to
    put together."""
    a, b = _Transport(), _Transport()
    (sid_a, _), (sid_b, _) = await _connect(sio, a), await _connect(sio, b)
    for sid in (sid_a, sid_b):
        sio.manager.basic_enter_room(sid, "/", "room")
    manager: FastManager = sio.manager
    assert manager.emit_now("m", {"seq": 1}, "/", "room", None)
    assert a.writes == b.writes == [_frame(1)]  # at once
    # More frames to the same connections in this iteration wait for its end, in order.
    assert manager.emit_now("m", {"seq": 2}, "/", "room", sid_b)  # not to b
    assert manager.emit_now("m", {"seq": 3}, "/", "room", None)
    assert a.writes == b.writes == [_frame(1)]
    await asyncio.sleep(0)
    assert a.writes == [_frame(1), _frame(2) + _frame(3)]
    assert b.writes == [_frame(1), _frame(3)]

    # That iteration was busy: now every frame of an iteration waits for its end.
    a.writes.clear(), b.writes.clear()
    manager.emit_now("m", {"seq": 4}, "/", "room", None)
    manager.emit_now("m", {"seq": 5}, "/", "room", None)
    assert a.writes == b.writes == []
    await asyncio.sleep(0)
    assert a.writes == b.writes == [_frame(4) + _frame(5)]
    # flush() writes at once what waits for one transport (before its closing frame).
    manager.emit_now("m", {"seq": 6}, "/", "room", None)
    sio.eio.flush(a)
    assert a.writes[-1] == _frame(6) and len(b.writes) == 1
    await asyncio.sleep(0)
    assert len(a.writes) == 2 and b.writes[-1] == _frame(6)

    # Quiet iterations (one frame per connection) bring the writes at once back.
    for n in range(7, 7 + QUIET_FLUSHES - 1):
        manager.emit_now("m", {"seq": n}, "/", "room", None)
        assert a.writes[-1] != _frame(n)  # still at the end of the iteration
        await asyncio.sleep(0)
        assert a.writes[-1] == _frame(n)
    manager.emit_now("m", {"seq": 20}, "/", "room", None)
    assert a.writes[-1] == b.writes[-1] == _frame(20)  # at once again
    # A transport closing meanwhile is not written to.
    a.closing = True
    manager.emit_now("m", {"seq": 21}, "/", "room", None)
    await asyncio.sleep(0)
    assert a.writes[-1] == _frame(20) and b.writes[-1] == _frame(21)


async def test_a_connection_with_too_much_unsent_is_dropped_and_the_others_served(sio, caplog):
    caplog.set_level(logging.WARNING, "realtime.engine_socket")
    slow, fine = _Transport(buffered=MAX_BUFFERED + 1), _Transport()
    (sid_slow, slow_socket), (sid_fine, _) = await _connect(sio, slow), await _connect(sio, fine)
    for sid in (sid_slow, sid_fine):
        sio.manager.basic_enter_room(sid, "/", "room")
    for n in range(3):
        sio.manager.emit_now("m", {"n": n}, "/", "room", None)
    await asyncio.sleep(0)
    assert slow.aborted and slow.writes == [] and slow_socket.dropping
    assert sum(w.count(b'42["m"') for w in fine.writes) == 3
    assert sum("cannot keep up" in r.getMessage() for r in caplog.records) == 1


async def test_a_polling_connection_with_too_many_packets_waiting_is_dropped(sio, caplog):
    caplog.set_level(logging.WARNING, "realtime.engine_socket")
    (sid, socket), (sid_ws, _) = await _connect(sio, None), await _connect(sio, ws := _Transport())
    for s in (sid, sid_ws):
        sio.manager.basic_enter_room(s, "/", "room")
    closes: list[Any] = []

    async def close(*args: Any, **kwargs: Any) -> None:
        closes.append(kwargs.get("reason"))

    socket.close = close  # type: ignore[method-assign]
    for n in range(MAX_QUEUED):
        sio.manager.emit_now("m", n, "/", "room", None)
    assert socket.queue.qsize() == MAX_QUEUED and not socket.dropping
    sio.manager.emit_now("m", "one too many", "/", "room", None)
    await asyncio.sleep(0)
    assert socket.dropping and socket.queue.qsize() == MAX_QUEUED and closes == ["slow client"]
    sio.manager.emit_now("m", "after", "/", "room", None)
    assert socket.queue.qsize() == MAX_QUEUED  # nothing more is queued for it
    await asyncio.sleep(0)
    assert sum(w.count(b'42["m"') for w in ws.writes) == MAX_QUEUED + 2


def test_engine_server_uses_the_light_queue():
    assert isinstance(FastEngineServer().create_queue(), LightQueue)


# -- run_eagerly --


async def test_run_eagerly_ends_a_coroutine_that_never_waits_before_returning_and_makes_no_task():
    ran: list[str] = []

    async def quick() -> None:
        ran.append("all of it")

    before = len(asyncio.all_tasks())
    assert run_eagerly(quick()) is None
    assert ran == ["all of it"] and len(asyncio.all_tasks()) == before


async def test_run_eagerly_hands_the_rest_to_a_task_after_the_first_wait():
    steps: list[str] = []
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waits() -> int:
        steps.append("before")
        value = await gate
        steps.append(f"got {value}")
        await asyncio.sleep(0)  # a bare yield, then more waits
        steps.append(f"slept, {await asyncio.sleep(0.01, 'timer')}")
        return value

    task = run_eagerly(waits())
    assert steps == ["before"] and task is not None and not task.done()
    gate.set_result(7)
    assert await task == 7
    assert steps == ["before", "got 7", "slept, timer"]


async def test_run_eagerly_passes_a_failure_of_what_it_waits_for_and_a_cancellation_into_the_coroutine():
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def catches() -> str:
        try:
            await failing
        except ValueError as exc:
            seen.append(f"caught {exc}")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0.01)  # cleans up, waiting on something else
            seen.append("cleaned up")
            raise
        return "not reached"

    task = run_eagerly(catches())
    assert task is not None
    failing.set_exception(ValueError("no"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["caught no", "cancelled", "cleaned up"]


async def test_run_eagerly_logs_what_the_coroutine_raises_before_waiting_and_keeps_its_context_apart(caplog):
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller's")

    async def sets_and_fails() -> None:
        var.set("the coroutine's")
        raise RuntimeError("broken")

    with caplog.at_level(logging.ERROR, logger="realtime.background"):
        assert run_eagerly(sets_and_fails()) is None
    assert var.get() == "caller's"
    assert "background task failed" in caplog.text and "broken" in caplog.text

    async def sets_then_waits() -> str:
        var.set("the coroutine's")
        await asyncio.sleep(0)
        return var.get()

    task = run_eagerly(sets_then_waits())
    assert task is not None and await task == "the coroutine's" and var.get() == "caller's"
