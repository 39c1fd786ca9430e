"""What a connection costs the garbage collector, while it lasts and when it ends.

At a hundred thousand connections a full collection of the garbage collector walks
millions of objects with the event loop held: its pause grows with the objects each idle
connection keeps, so they are counted here. And what a connection leaves when it ends should
never wait for a collection: its objects hold no reference cycle, so the last reference going
frees them all, and its memory comes back with the disconnect.

The server runs in this process, so that the collector's objects can be looked at; the
clients that are counted run in another.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from server.keys import SIO
from tests.support.chat import ANA, BEN, make_settings, make_token
from tests.support.wsclient import Client

ROOT = Path(__file__).resolve().parents[2]
IDLE = 200
# Objects the collector tracks per idle connection, signed in and in a group: the engine's
# and the Socket.IO session, the WebSocket with aiohttp's frame reader, uvloop's transport,
# the rooms. 17.7 as measured here (24.7 before the frame reader's queue, the ping wheel's
# entries and the WebSocket's callbacks were made smaller).
MOST_TRACKED_PER_CONNECTION = 19

# Opens IDLE connections, signed in and in Maths, says so, and holds them until its input ends.
HOLDER = """
import asyncio, sys
from tests.support.wsclient import Client
async def main(port, token, count):
    clients = [await Client.signed_in(port, token) for _ in range(count)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""


async def hold(port: int) -> asyncio.subprocess.Process:
    """``IDLE`` connections of another process, signed in and in Maths, until ``let_go``."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(port), make_token(ANA), str(IDLE), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout is not None
    assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"ready\n"
    return holder


async def let_go(holder: asyncio.subprocess.Process) -> None:
    if holder.stdin is not None:
        holder.stdin.close()
    await holder.wait()


@pytest.fixture
def settings():  # type: ignore[no-untyped-def]
    return make_settings(max_connections_per_user=IDLE)


async def test_an_idle_connection_keeps_few_objects_for_the_garbage_collector_to_walk(server: Any) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")  # see conftest.py
    engine = server.app[SIO].eio
    gc.collect()
    before = len(gc.get_objects())
    holder = await hold(server.port)
    try:
        assert len(engine.sockets) == IDLE
        gc.collect()
        per_connection = (len(gc.get_objects()) - before) / IDLE
    finally:
        await let_go(holder)
    assert per_connection <= MOST_TRACKED_PER_CONNECTION, f"{per_connection:.1f} tracked objects per idle connection"


async def all_closed(engine: Any) -> None:
    """Until every session the server has is closed (a closed one is forgotten later)."""
    for _ in range(200):
        if all(socket.closed for socket in engine.sockets.values()):
            await asyncio.sleep(0.1)  # the disconnect handlers' tasks finish
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the sessions did not close")


async def test_connections_that_end_leave_nothing_for_the_garbage_collector(server: Any) -> None:
    from realtime.websocket import WebSocketConnection

    engine = server.app[SIO].eio
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept, to be looked at
    try:
        clients = [await Client.signed_in(server.port, make_token(user)) for user in (ANA, BEN) * 5]
        assert len(engine.sockets) == 10
        for client in clients[:5]:
            client.close()  # the TCP connection, without a closing handshake
        for client in clients[5:]:
            client.send("41")  # Socket.IO's disconnect, then the TCP connection
            client.close()
        await all_closed(engine)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith(("realtime.", "handlers."))
                or isinstance(o, WebSocketConnection)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == [], f"{len(left)} objects of ended connections waited for the collector: {sorted(set(left))}"


async def test_long_polling_sessions_that_end_leave_nothing_for_the_garbage_collector_nor_a_failed_upgrade(server: Any) -> None:
    import json

    import aiohttp

    engine = server.app[SIO].eio
    base = f"http://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=polling"
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        async with aiohttp.ClientSession() as http:
            for user in (ANA, BEN):
                async with http.get(base) as resp:
                    sid = json.loads((await resp.text())[1:])["sid"]
                url = f"{base}&sid={sid}"
                async with http.post(url, data="40" + json.dumps({"token": make_token(user)})) as resp:
                    assert resp.status == 200
                async with http.get(url) as resp:
                    assert (await resp.text()).startswith("40{")
                if user == BEN:  # an upgrade to WebSocket whose connection goes during the probe
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    writer.write(f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
                                 f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                                 .encode())
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
                    writer.close()
                    await asyncio.sleep(0.1)
                async with http.post(url, data="1") as resp:  # Engine.IO's close
                    assert resp.status == 200
        await all_closed(engine)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith(("realtime.", "handlers."))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == [], f"{len(left)} objects of ended sessions waited for the collector: {sorted(set(left))}"


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_what_a_full_collection_leaves_is_frozen_and_connections_are_still_freed_as_they_end(
        server: Any) -> None:
    """``python -m server`` freezes what each full collection leaves (``server.collector``), so
    the next ones walk only what was made since; connections that end are freed all the same,
    and something frozen that dies in a reference cycle is reclaimed by the hourly deep one."""
    from server.collector import SurvivorFreezer

    engine = server.app[SIO].eio
    now = [0.0]
    freezer = SurvivorFreezer.install(deep_every_s=3600, clock=lambda: now[0])
    try:
        gc.collect()
        before = gc.get_freeze_count()
        holder = await hold(server.port)
        try:
            gc.collect()
            held = gc.get_freeze_count()
            assert held - before >= IDLE * 15, "the idle connections' objects were not frozen"
            assert len(gc.get_objects()) < 1_000, "a full collection would walk them again"
        finally:
            await let_go(holder)
        await all_closed(engine)
        assert held - gc.get_freeze_count() >= IDLE * 15, "frozen objects of ended connections were not freed"

        cycle = _Cycle()
        gone = weakref.ref(cycle)
        gc.collect()  # frozen with the rest
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: no ordinary collection walks it
        now[0] = 3600.0
        gc.collect()  # the deep one: everything is unfrozen first
        assert gone() is None
        assert freezer.deep_collections == 1
    finally:
        SurvivorFreezer.uninstall()
