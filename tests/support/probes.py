"""Measuring a server process under a hostile client: its memory, its descriptors, a member's latency.

A ``HostileNode`` is ``python -m server`` on the embedded store seeded with the test users and
groups (``tests.support.seeded_server``). A ``ProbeMember`` sends messages with acks from its own
thread and event loop, so the attacking coroutines in the test's loop do not delay its clock.
``Gauge`` samples ``/proc/<pid>`` for resident memory and open descriptors.

A send is judged only when the member itself was running: its loop also keeps a clock, and a
send whose wait overlaps a moment when that clock fell far behind (the test process or the whole
machine was not scheduled) is set aside and counted, not charged to the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
import socketio

from .nodes import Node

log = logging.getLogger(__name__)

MB = 1024 * 1024


class HostileNode(Node):
    """A server process started through ``tests.support.seeded_server`` (see its docstring)."""

    module = "tests.support.seeded_server"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@pytest.fixture
def hostile_node(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], HostileNode]]:
    """``hostile_node(env)`` → a started ``HostileNode``; all are stopped at teardown."""
    started: list[HostileNode] = []

    def _start(env: dict[str, str]) -> HostileNode:
        node = HostileNode(env, tmp_path, f"hostile{len(started)}")
        started.append(node)
        return node.start()

    yield _start
    for node in started:
        node.stop()


# -- the process's resources --


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Gauge:
    """Samples a process's memory and descriptors in a thread, keeping the peaks."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.peak_rss, self.peak_fds = rss_bytes(self.pid), fd_count(self.pid)
        self._thread = threading.Thread(target=self._run, name="gauge", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
                self.peak_fds = max(self.peak_fds, fd_count(self.pid))
            except OSError:  # the process ended; the test will say why
                return


async def settled(measure: Callable[[], int], bound: int, timeout: float) -> int:
    """Poll ``measure`` until it is at most ``bound`` or ``timeout`` passes; the last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > bound and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = measure()
    return value


# -- a member sending through the attack --


@dataclass
class Sample:
    started: float  # time.monotonic() when the send left
    latency: float  # seconds to the ack (the timeout when none came)
    ok: bool


class ProbeMember:
    """A group member sending ``send_message`` with an ack in a loop, from a thread of its own."""

    SEND_TIMEOUT_S = 5.0
    TICK_S = 0.005  # the member's own clock: a sleep this long ...
    STALL_S = 0.030  # ... that ends this much late means the member itself was not running

    def __init__(self, url: str, token: str, group_id: str, pace_s: float = 0.06) -> None:
        self.url, self.token, self.group_id, self.pace_s = url, token, group_id, pace_s
        self.samples: list[Sample] = []
        self.stalls: list[tuple[float, float]] = []  # (from, to) monotonic: the member's own loop stood still
        self.joined: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._requests: list[tuple[str, Any, threading.Event, list[Any]]] = []
        self._thread = threading.Thread(target=self._run, name="probe-member", daemon=True)

    def start(self) -> ProbeMember:
        self._thread.start()
        if not self._ready.wait(20) or self.error is not None:
            self.stop()
            raise AssertionError(f"the probe member could not join: {self.error!r}")
        return self

    def call(self, event: str, data: Any, timeout: float = 10) -> Any:
        """Send one more event from the member's connection and wait for its ack."""
        done, answer = threading.Event(), []  # type: threading.Event, list[Any]
        self._requests.append((event, data, done, answer))
        if not done.wait(timeout):
            raise AssertionError(f"no ack for {event} within {timeout} s")
        return answer[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(ProbeMember.SEND_TIMEOUT_S + 5)
        if self.error is not None:
            raise AssertionError(f"the probe member failed: {self.error!r}")

    def judged(self, start: float, end: float) -> tuple[list[Sample], int]:
        """The sends that left between ``start`` and ``end`` (monotonic) while the member itself
        kept running, and how many were set aside because its own loop stood still meanwhile."""
        window = [s for s in self.samples if start <= s.started <= end]
        kept = [s for s in window
                if not any(a < s.started + s.latency and s.started < b for a, b in self.stalls)]
        return kept, len(window) - len(kept)

    async def _keep_time(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            after = time.monotonic()
            if after - before > self.TICK_S + self.STALL_S:
                self.stalls.append((before, after))

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported by stop(); a thread must not raise
            log.exception("probe member failed")
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        clock = asyncio.create_task(self._keep_time())
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10)
        try:
            self.joined = await sio.call("join_group", {"group_id": self.group_id}, timeout=10)
            if not self.joined.get("ok"):
                raise AssertionError(f"join refused: {self.joined}")
            self._ready.set()
            n = 0
            while not self._stop.is_set():
                while self._requests:
                    event, data, done, answer = self._requests.pop(0)
                    answer.append(await sio.call(event, data, timeout=10))
                    done.set()
                n += 1
                started = time.monotonic()
                try:
                    ack = await sio.call("send_message", {"group_id": self.group_id, "content": f"probe {n}"},
                                         timeout=self.SEND_TIMEOUT_S)
                    ok = bool(ack.get("ok"))
                except socketio.exceptions.TimeoutError:
                    ok = False
                self.samples.append(Sample(started, time.monotonic() - started, ok))
                await asyncio.sleep(self.pace_s)
        finally:
            clock.cancel()
            await sio.disconnect()


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank); infinite for no values."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


# -- the raw transport --


def engine_url(base: str, transport: str = "websocket", sid: str | None = None) -> str:
    url = f"{base}/socket.io/?EIO=4&transport={transport}"
    return url + f"&sid={sid}" if sid else url


async def open_engine_ws(session: aiohttp.ClientSession, base: str, *, timeout: float = 5,
                         headers: dict[str, str] | None = None) -> aiohttp.ClientWebSocketResponse | None:
    """A websocket past the Engine.IO handshake, or ``None`` when the server refused it."""
    try:
        ws = await session.ws_connect(engine_url(base), headers=headers or {}, timeout=aiohttp.ClientWSTimeout(
            ws_receive=None, ws_close=timeout), autoping=True)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None
    try:
        msg = await ws.receive(timeout)
    except TimeoutError:
        await ws.close()
        return None
    if msg.type != aiohttp.WSMsgType.TEXT or not msg.data.startswith("0{"):
        await ws.close()
        return None
    return ws


async def next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> str | None:
    """The next text frame that is not a ping (pings are answered); ``None`` on close or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            msg = await ws.receive(remaining)
        except TimeoutError:
            return None
        if msg.type != aiohttp.WSMsgType.TEXT:
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                return None
            continue
        if msg.data == "2":
            await ws.send_str("3")
            continue
        return str(msg.data)


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> bool:
    """Read (answering pings) until the server closes ``ws``; ``True`` when it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ws.closed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            msg = await ws.receive(remaining)
        except TimeoutError:
            return ws.closed
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            return True
        if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
            try:
                await ws.send_str("3")
            except (ConnectionError, RuntimeError):
                return True
    return True


def connect_error_data(frame: str | None) -> Any:
    """What socket.io-client exposes as ``err.data`` for a CONNECT_ERROR frame
    (``44{"message": ..., "data": ...}``), else ``None``."""
    if frame is None or not frame.startswith("44"):
        return None
    try:
        packet = json.loads(frame[2:])
    except ValueError:
        return None
    return packet.get("data") if isinstance(packet, dict) else None


async def raw_http(port: int, request: bytes, timeout: float = 5) -> tuple[int | None, Any]:
    """Send exact request bytes to 127.0.0.1 (for headers no client library would send);
    the status and the JSON body (``None`` when there is no answer or no JSON)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (TimeoutError, OSError):
        return None, None
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    except (TimeoutError, OSError):
        return None, None
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return None, None
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


@dataclass
class Bounds:
    """What the attack may leave behind and cost a member."""

    rss_slack: int = 10 * MB
    fd_slack: int = 3
    p99_s: float = 0.100
    min_samples: int = 10
    settle_s: float = 6.0


@dataclass
class Readings:
    """Before, during and after one attack."""

    rss_before: int = 0
    fds_before: int = 0
    rss_peak: int = 0
    fds_peak: int = 0
    rss_after: int = 0
    fds_after: int = 0
    latencies: list[float] = field(default_factory=list)
    failed_sends: int = 0
    set_aside: int = 0  # sends not judged: the probe member itself stood still meanwhile

    def problems(self, bounds: Bounds) -> list[str]:
        found = []
        if self.rss_after > self.rss_before + bounds.rss_slack:
            found.append(f"resident memory {self.rss_before / MB:.1f} MB -> {self.rss_after / MB:.1f} MB after "
                         f"(peak {self.rss_peak / MB:.1f} MB), over the {bounds.rss_slack / MB:.0f} MB allowed")
        if self.fds_after > self.fds_before + bounds.fd_slack:
            found.append(f"open descriptors {self.fds_before} -> {self.fds_after} after (peak {self.fds_peak})")
        if len(self.latencies) < bounds.min_samples:
            found.append(f"the probe member got only {len(self.latencies)} sends through during the attack")
        elif p99(self.latencies) > bounds.p99_s:
            found.append(f"probe member send->ack p99 {p99(self.latencies) * 1000:.0f} ms during the attack "
                         f"(max {max(self.latencies) * 1000:.0f} ms, {len(self.latencies)} sends)")
        if self.failed_sends:
            found.append(f"{self.failed_sends} probe member sends were refused or unanswered")
        return found

    def summary(self) -> str:
        return (f"rss {self.rss_before / MB:.1f}/{self.rss_peak / MB:.1f}/{self.rss_after / MB:.1f} MB, "
                f"fds {self.fds_before}/{self.fds_peak}/{self.fds_after}, "
                f"p99 {p99(self.latencies) * 1000:.1f} ms over {len(self.latencies)} sends"
                + (f", {self.set_aside} set aside while the member stood still" if self.set_aside else ""))
