"""Idle WebSocket connections against a real server process: what each one costs it.

A study platform's evening peak is many members connected and idle, so the server's memory
per connection and what a mass disconnect leaves behind are what an operator sizes a node by.
The clients (``tests.support.wsclient``) are written by hand over TCP, light enough that 2,000
of them open in two seconds; each is signed in and has joined a group.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.chat import ANA, SECRET, make_token
from tests.support.probes import HostileNode, fd_count, hostile_node, rss_bytes, settled
from tests.support.wsclient import MATHS, Client

# Measures memory: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

__all__ = ["hostile_node"]  # the fixture, used by name below

ENV = {
    "MONGODB_URI": "memory://",
    "JWT_SECRET": SECRET,
    "LOG_LEVEL": "WARNING",
    "MAX_CONNECTIONS_PER_USER": "100000",
    "RATE_LIMIT_EVENTS_PER_S": "1000000",
    "RATE_LIMIT_EVENTS_BURST": "1000000",
}
CONNECTIONS = 2_000
WARM_UP = 200  # opened (and kept) before the baseline: first-use allocations are not per connection
OPENING_AT_ONCE = 50
# The server's resident memory per idle connection (signed in, in a group, heartbeats running).
# Measured at 2,000: 6.4 KB; it was 18.7 KB while aiohttp's request, handler, WebSocket response
# and two tasks stayed alive for each connection's whole life.
MAX_KB_PER_CONNECTION = 10


@pytest.fixture
async def node(hostile_node) -> AsyncIterator[HostileNode]:  # type: ignore[no-untyped-def]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield hostile_node(ENV)


async def open_many(port: int, count: int) -> list[Client]:
    token = make_token(ANA)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one() -> Client:
        async with gate:
            return await Client.signed_in(port, token)
    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_an_idle_member_costs_the_server_little_memory_and_leaves_nothing_behind(node):
    pid, port = node.pid, node.port
    kept = await open_many(port, WARM_UP)
    await asyncio.sleep(0.5)
    rss_before, fds_before = rss_bytes(pid), fd_count(pid)

    started = time.monotonic()
    clients = await open_many(port, CONNECTIONS)
    opened_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    per_connection_kb = (rss_bytes(pid) - rss_before) / CONNECTIONS / 1024
    assert fd_count(pid) - fds_before >= CONNECTIONS

    # Every connection is alive: a message sent on one reaches another.
    kept[0].send("422" + json.dumps(["send_message", {"group_id": MATHS, "content": "still here?"}]))
    assert (await kept[0].ack(2))["ok"]
    while not (await clients[-1].text()).startswith('42["message"'):
        pass

    for client in clients:
        client.close()
    fds_after = await settled(lambda: fd_count(pid), fds_before, 15)
    for client in kept:
        client.close()
    assert per_connection_kb <= MAX_KB_PER_CONNECTION, (
        f"{per_connection_kb:.1f} KB of server memory per idle connection (opened {CONNECTIONS} in {opened_s:.1f} s)")
    assert fds_after <= fds_before, f"{fds_after - fds_before} descriptors still open after every client left"
