"""A connection that cannot keep up is disconnected instead of growing the server's memory."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from cluster.rate_limits import Bucket, RateLimits
from server.keys import EVENTS
from tests.support.chat import ANA, BEN, CAROL, MATHS, make_settings, make_token
from tests.support.raw import RawSocket

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial


@pytest.fixture
def settings():
    return make_settings(rate_limits=RateLimits(send=Bucket(0, 0), other=Bucket(0, 0)))


async def test_a_client_that_stops_reading_is_disconnected_and_others_get_everything(connect, server_url, server):
    events = server.app[EVENTS]
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    async with aiohttp.ClientSession() as http:
        # Ana joins over a hand-written socket and then never reads again.
        stalled = await RawSocket.open(http, server_url, make_token(ANA))
        assert (await stalled.call(1, f'["join_group",{{"group_id":"{MATHS}"}}]'))["ok"]
        carol = await connect(CAROL)
        payload = "x" * 3_900
        sent = 0
        while ANA in {c.user_id for c in events.connections.values()} and sent < 3_000:
            ack = await carol.call("send_message", {"group_id": MATHS, "content": f"{sent} {payload}"})
            assert ack["ok"], ack
            sent += 1
        assert ANA not in {c.user_id for c in events.connections.values()}, "the stalled client was never dropped"
        received = await ben.wait_event("message", sent, timeout=60)
        assert [m["seq"] for m in received] == list(range(1, sent + 1))
        await stalled.ws.close()


async def test_a_client_that_stops_answering_pings_is_disconnected_and_a_live_one_stays(connect, server_url, server):
    """Engine.IO's heartbeat: the server pings every ``ping_interval``; a client
    that does not answer within ``ping_timeout`` is gone (its presence with it),
    while one that answers stays connected through many pings."""
    from server.keys import SIO

    eio = server.app[SIO].eio
    eio.ping_interval, eio.ping_timeout = 0.5, 1.0  # told to clients in the Engine.IO handshake
    events = server.app[EVENTS]
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
        assert (await ws.receive_str()).startswith("0{")
        await ws.send_str("40" + '{"token": "%s"}' % make_token(ANA))
        assert (await ws.receive_str()).startswith("40{")
        await ws.send_str(f'421["join_group",{{"group_id":"{MATHS}"}}]')
        pings = 0
        closed = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:
            msg = await ws.receive(timeout=deadline - loop.time())
            if msg.type != aiohttp.WSMsgType.TEXT:
                closed = True
                break
            pings += msg.data == "2"  # never answered
        assert closed, "the silent client was never disconnected"
        assert pings >= 1
    offline = await ben.wait_for(lambda: [p for p in ben.events("presence") if p["user_id"] == ANA and not p["online"]])
    assert offline
    assert ANA not in {c.user_id for c in events.connections.values()}
    # Ben answered every ping meanwhile (python-socketio's client does) and is still served.
    assert (await ben.call("send_message", {"group_id": MATHS, "content": "still here"}))["ok"]
