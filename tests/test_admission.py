"""Connections that have not signed in: closed after CONNECT_TIMEOUT_S, at most
MAX_PENDING_PER_IP per client address, and their file descriptors given back."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import pytest
import uvloop

from realtime.admission import Admission
from tests.support.chat import ANA, make_settings, make_token

QUICK = 5


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def engine_open(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str(timeout=QUICK)).startswith("0{")
    return ws


async def closed_within(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> bool:
    """Whether the server closes ``ws`` within ``timeout`` s (pings are answered meanwhile)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return True
                if msg.data == "2":
                    await ws.send_str("3")
    except TimeoutError:
        return False


async def settle_fds(baseline: int, timeout: float = 10) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while open_fds() > baseline and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    return open_fds()


@pytest.fixture
def settings():
    return make_settings(connect_timeout_s=1.0, max_pending_per_ip=4)


async def test_a_connection_without_connect_is_closed_and_its_descriptors_given_back(server_url):
    baseline = open_fds()
    async with aiohttp.ClientSession() as session:
        sockets = [await engine_open(session, server_url) for _ in range(4)]
        assert open_fds() >= baseline + 8  # both ends of each connection live in this process
        closed = await asyncio.gather(*(closed_within(ws, 1.0 + 8) for ws in sockets))
        assert all(closed), closed
    assert await settle_fds(baseline) <= baseline


async def test_a_refused_connect_does_not_stop_the_clock(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await engine_open(session, server_url)
        await ws.send_str('40{"token":"not a token"}')
        assert (await ws.receive_str(timeout=QUICK)).startswith("44{")
        assert await closed_within(ws, 1.0 + 8)


async def test_a_signed_in_connection_stays_open(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await engine_open(session, server_url)
        await ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
        assert (await ws.receive_str(timeout=QUICK)).startswith("40{")
        assert not await closed_within(ws, 1.0 * 3)
        await ws.send_str('421["list_groups"]')
        assert (await ws.receive_str(timeout=QUICK)).startswith('431[{"ok":true')
        await ws.close()


async def test_a_connection_that_leaves_every_namespace_is_pending_again(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await engine_open(session, server_url)
        await ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
        assert (await ws.receive_str(timeout=QUICK)).startswith("40{")
        await ws.send_str("41")
        assert await closed_within(ws, 1.0 + 8)


async def test_the_next_handshake_from_an_address_over_the_cap_is_refused(server_url):
    async with aiohttp.ClientSession() as session:
        pending = [await engine_open(session, server_url) for _ in range(4)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
        assert refused.value.status == 403
        async with session.get(f"{server_url}/socket.io/?EIO=4&transport=polling") as response:
            assert response.status == 403
            body = await response.json()
            assert body["code"] == 4 and "not signed in" in body["message"]
        # One of them signs in: it no longer counts, and a new handshake is accepted.
        await pending[0].send_str("40" + json.dumps({"token": make_token(ANA)}))
        assert (await pending[0].receive_str(timeout=QUICK)).startswith("40{")
        extra = await engine_open(session, server_url)
        # Signed-in connections are not capped here (that is MAX_CONNECTIONS_PER_USER's job).
        await extra.send_str("40" + json.dumps({"token": make_token(ANA)}))
        assert (await extra.receive_str(timeout=QUICK)).startswith("40{")
        await asyncio.gather(*(ws.close() for ws in [*pending, extra]))


async def test_a_closed_pending_connection_frees_its_place(server_url):
    async with aiohttp.ClientSession() as session:
        pending = [await engine_open(session, server_url) for _ in range(4)]
        await pending[0].close()
        for _ in range(50):  # the server sees the close shortly after
            try:
                ws = await engine_open(session, server_url)
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("a place held by a closed connection was never given back")
        await asyncio.gather(*(w.close() for w in [*pending[1:], ws]))


def test_deadlines_of_a_burst_of_connections_cost_next_to_no_cpu_when_they_pass():
    """A burst of connections starts a CONNECT deadline each. Those that signed in
    meanwhile must cost next to nothing when their deadlines come, and those that did
    not are still closed on time. Before, the wheel woke for every deadline, and on
    uvloop (the loop ``python -m server`` runs) it spun through gaps under half a
    millisecond: 10,000 connections taken in 6 s cost a third of a core for the 6 s
    that came 10 s later."""
    timeout, count, spacing = 1.0, 2_000, 0.00025

    async def burst() -> tuple[float, dict[str, float], dict[str, float]]:
        closed: dict[str, float] = {}

        async def expire(sid: str) -> None:
            closed[sid] = time.monotonic()

        admission = Admission(timeout, 0, expire)
        deadlines: dict[str, float] = {}
        start = time.monotonic()
        for i in range(count):  # one connection every quarter of a millisecond, for half a second
            while time.monotonic() < start + i * spacing:
                pass
            sid = f"sid-{i}"
            admission.add(sid, "192.0.2.1")
            if i % 100:
                admission.discard(sid)  # it signed in
            else:
                deadlines[sid] = time.monotonic() + timeout
        await asyncio.sleep(start + timeout - 0.1 - time.monotonic())
        cpu = time.process_time()
        await asyncio.sleep(start + timeout + count * spacing + 0.2 - time.monotonic())
        spent = time.process_time() - cpu
        await admission.close()
        return spent, deadlines, closed

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        spent, deadlines, closed = runner.run(burst())
    assert spent < 0.07, f"{spent:.3f} CPU-s while {count} deadlines passed in {count * spacing:.1f} s"
    assert closed.keys() == deadlines.keys()
    late = {sid: closed[sid] - deadlines[sid] for sid in deadlines}
    assert all(-0.001 <= s <= 0.3 for s in late.values()), late


async def test_settings_are_read_from_the_environment():
    from server.config import ConfigError, Settings

    env = {"MONGODB_URI": "memory://", "JWT_SECRET": "x" * 40}
    defaults = Settings.from_env(env)
    assert (defaults.connect_timeout_s, defaults.max_pending_per_ip) == (10.0, 50)
    chosen = Settings.from_env({**env, "CONNECT_TIMEOUT_S": "2.5", "MAX_PENDING_PER_IP": "0"})
    assert (chosen.connect_timeout_s, chosen.max_pending_per_ip) == (2.5, 0)
    for bad in ({"CONNECT_TIMEOUT_S": "0"}, {"MAX_PENDING_PER_IP": "1.5"}, {"MAX_PENDING_PER_IP": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings.from_env({**env, **bad})
