"""The server process's garbage collections, as an operator sees them in ``/metrics``.

A full collection holds the event loop for as long as it walks every object the collector
tracks. What start-up made (modules, classes, functions: about 85,000 objects, 15-30 ms a walk)
lives as long as the process, so ``python -m server`` leaves it out of every later collection,
and each collection's pause is exported by generation. Connections are what it walks at scale
(about 18 objects each), so ``python -m server`` also collects less often than Python's defaults.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import aiohttp

from tests.support.chat import ANA, BEN, MATHS, SECRET, make_token
from tests.support.mongo import seed_mongo
from tests.support.nodes import Node, metric

USERS = [(ANA, "Ana", "García"), (BEN, "Ben", "Okafor")]
GROUPS = [(MATHS, "Maths", [ANA, BEN])]


def metrics(node: Node) -> tuple[dict[str, dict[str, float]], float]:
    """``chat_gc_pause_seconds`` by generation (its count, and its cumulative buckets by bound),
    and ``chat_gc_frozen_objects``."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pauses: dict[str, dict[str, float]] = {}
    for kind, generation, bound, value in re.findall(
            r'^chat_gc_pause_seconds_(count|bucket)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$', text, re.MULTILINE):
        pauses.setdefault(generation, {})[bound if kind == "bucket" else "count"] = float(value)
    frozen = re.search(r"^chat_gc_frozen_objects (\S+)$", text, re.MULTILINE)
    return pauses, float(frozen.group(1)) if frozen else 0.0


async def test_the_start_up_heap_is_left_out_of_collections_and_each_pause_is_measured(
        mongo_uri, mongo_db_name, node_factory, clients):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    node = node_factory({"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET,
                         "RATE_LIMIT_SEND_PER_S": "0"}, "gc")
    at_start, frozen = metrics(node)
    # Modules, classes and functions: a full collection no longer walks them.
    assert frozen > 50_000, f"only {frozen:.0f} objects were left out of collections"
    assert sorted(at_start) == ["0", "1", "2"]
    assert at_start["2"]["count"] >= 1  # the one that ran before the heap was frozen

    ana, ben = await clients(node, ANA), await clients(node, BEN)
    for client in (ana, ben):
        await client.call("join_group", {"group_id": MATHS})
    for i in range(300):
        await ben.call("send_message", {"group_id": MATHS, "content": f"message {i}"})
    after, _ = metrics(node)
    for generation in after.values():
        assert generation["+Inf"] == generation["count"]


async def test_thousands_of_connections_coming_and_going_cause_no_full_collection(node_factory):
    """3,000 connections sign in and then all drop at once. With Python's default thresholds,
    their objects set off full collections (2 here; at 19,000 connections 11, the longest
    holding the event loop for 0.48 s); with the server's, none, while the youngest objects are
    still collected (and each of those pauses measured)."""
    count = 3_000
    node = node_factory({"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "MAX_PENDING_PER_IP": "0",
                         "MAX_CONNECTIONS_PER_USER": str(count)}, "gc-connections")
    before, _ = metrics(node)
    url = node.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    connect = "40" + json.dumps({"token": make_token(ANA, ttl=3600)})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def sign_in() -> aiohttp.ClientWebSocketResponse:
            ws = await http.ws_connect(url)
            assert (await ws.receive_str(timeout=10)).startswith("0{")
            await ws.send_str(connect)
            assert (await ws.receive_str(timeout=10)).startswith("40{")
            return ws

        sockets: list[aiohttp.ClientWebSocketResponse] = []
        for start in range(0, count, 250):
            sockets += await asyncio.gather(*(sign_in() for _ in range(start, min(count, start + 250))))
    # Closing the session closed every connection at once, without a closing handshake.
    assert len(sockets) == count
    for _ in range(100):  # until the server has processed every disconnect
        await asyncio.sleep(0.1)
        if (left := metric(node, "chat_connected_clients")) == 0:
            break
    assert left == 0, f"{left:.0f} connections still counted"
    after, _ = metrics(node)  # read once every disconnect is done, so none of its collections is missed
    assert after["0"]["count"] > before["0"]["count"], "no collection of the youngest objects was measured"
    full = after["2"]["count"] - before["2"]["count"]
    assert full == 0, f"{full:.0f} full collections while {count} connections came and went"
