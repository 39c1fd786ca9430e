"""A connection that cannot keep up is disconnected instead of growing the server's memory."""

from __future__ import annotations

import aiohttp
import pytest

from handlers.limits import Bucket, RateLimits
from server.keys import EVENTS
from tests.support.chat import ANA, BEN, CAROL, MATHS, make_settings, make_token
from tests.support.raw import RawSocket


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
