"""Faults on MongoDB with real processes: whatever happens, every acknowledged message
is stored exactly once and every client that catches up holds the same contiguous history."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.chat import ANA, BEN, CAROL, MATHS
from tests.support.nodes import Node
from tests.support.resilient import ResilientClient
from tests.test_mongo_server import database, env


@pytest.fixture
def start(env, node_factory):
    return lambda name, **extra: node_factory({**env, **extra}, name)


@pytest.fixture
async def resilient():
    made: list[ResilientClient] = []

    async def _make(user_id: str, urls: list[str]) -> ResilientClient:
        client = ResilientClient(user_id, urls, MATHS)
        await client.connect()
        made.append(client)
        return client

    yield _make
    for client in made:
        await client.close()


async def assert_exact(clients: list[ResilientClient], sent: int) -> None:
    acked = {m["id"]: m for c in clients for m in c.acked.values()}
    assert len(acked) == sent  # one stored message per logical send, never two
    histories = [await c.catch_up() for c in clients]
    assert all(h == list(range(1, sent + 1)) for h in histories)
    stored = {m["id"]: m for m in clients[0].seen.values()}
    assert set(stored) == set(acked)
    for client in clients:
        # Broadcasts on any one connection came in increasing seq.
        assert client.live_seqs == sorted(set(client.live_seqs))


async def test_storage_stopped_and_restarted_mid_burst(start, resilient, database):
    node = start("a")
    clients = [await resilient(user, [node.url]) for user in (ANA, BEN, CAROL)]

    async def burst(client):
        for i in range(25):
            await client.send(f"{client.user_id} {i}")

    async def outage():
        while sum(len(c.acked) for c in clients) < 20:
            await asyncio.sleep(0.01)
        database.stop()
        await asyncio.sleep(1.5)
        database.start()

    await asyncio.gather(outage(), *[burst(c) for c in clients])
    await assert_exact(clients, 75)


async def test_client_dropped_mid_send_resends_the_same_id(start, resilient):
    node = start("a")
    ana = await resilient(ANA, [node.url])
    observer = await resilient(BEN, [node.url])
    for i in range(10):
        client_msg_id = f"drop-{i}"
        # Fire the send and cut the transport at once: the server may or may not have it.
        await ana.sio.emit("send_message", {"group_id": MATHS, "content": f"fragile {i}",
                                            "client_msg_id": client_msg_id})
        await ana.sio.eio.disconnect(abort=True)
        await ana.reconnect()
        await ana.send(f"fragile {i}", client_msg_id=client_msg_id)
    await assert_exact([ana, observer], 10)


async def test_node_killed_while_clients_send(env, tmp_path, redis_server, resilient):
    nodes = [Node({**env, "REDIS_URL": redis_server.url, "PRESENCE_TTL_S": "3"}, tmp_path, f"n{i}").start()
             for i in range(2)]
    try:
        urls = [n.url for n in nodes]
        clients = [await resilient(ANA, urls), await resilient(BEN, urls[::-1]), await resilient(CAROL, urls)]

        async def burst(client):
            for i in range(30):
                await client.send(f"{client.user_id} {i}")

        async def crash():
            while sum(len(c.acked) for c in clients) < 25:
                await asyncio.sleep(0.01)
            nodes[0].kill()

        await asyncio.gather(crash(), *[burst(c) for c in clients])
        await assert_exact(clients, 90)
    finally:
        for n in nodes:
            n.stop()
