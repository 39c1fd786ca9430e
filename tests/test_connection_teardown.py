"""A WebSocket connection that ends is freed at once, by reference counting.

At a hundred thousand connections a full collection of the garbage collector walks
millions of objects with the event loop held. What a connection leaves when it ends should
never wait for one: its objects hold no reference cycle, so the last reference going frees
them all, and its memory comes back with the disconnect.

The server runs in this process, so that the collector's findings can be looked at.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from server.keys import SIO
from tests.support.chat import ANA, BEN, make_token
from tests.support.wsclient import Client


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


async def test_a_long_polling_session_that_ends_leaves_nothing_for_the_garbage_collector(server: Any) -> None:
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
                async with http.post(url, data="1") as resp:  # Engine.IO's close
                    assert resp.status == 200
        await all_closed(engine)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith(("realtime.", "handlers."))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == [], f"{len(left)} objects of ended sessions waited for the collector: {sorted(set(left))}"
