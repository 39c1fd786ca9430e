"""The Redis manager as other nodes see it: two apps on one Redis, a real client on each."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
import socketio

from server.app import create_app
from server.keys import SIO
from tests.support.chat import (
    ANA,
    BEN,
    ChatClient,
    make_settings,
    make_token,
    seeded_store,
)
from tests.support.redis import RedisProcess


@pytest.fixture
async def two_nodes(aiohttp_server, redis_server: RedisProcess):
    """Two apps sharing ``redis_server``, each on its own port and store."""
    settings = make_settings(redis_url=redis_server.url)
    return [await aiohttp_server(create_app(settings, storage=seeded_store())) for _ in range(2)]


@pytest.fixture
async def client_on():
    made: list[socketio.AsyncClient] = []

    async def _connect(server: Any, user_id: str) -> ChatClient:
        sio = socketio.AsyncClient(reconnection=False)
        made.append(sio)
        client = ChatClient(sio, user_id)
        await sio.connect(str(server.make_url("")), auth={"token": make_token(user_id)},
                          transports=["websocket"], wait_timeout=10)
        return client

    yield _connect
    for sio in made:
        if sio.connected:
            await sio.disconnect()


async def test_an_emit_with_several_arguments_reaches_the_other_node_as_several(two_nodes, client_on):
    local, remote = await client_on(two_nodes[0], ANA), await client_on(two_nodes[1], BEN)
    await two_nodes[0].app[SIO].emit("notice", ("first", {"n": 2}, [3]))
    for client in (local, remote):
        assert (await client.wait_event("notice"))[0] == ("first", {"n": 2}, [3])


async def test_an_emit_with_bytes_reaches_the_other_node_and_the_queue_keeps_working(two_nodes, client_on):
    local, remote = await client_on(two_nodes[0], ANA), await client_on(two_nodes[1], BEN)
    sio = two_nodes[0].app[SIO]
    await sio.emit("file", {"name": "a.bin", "body": b"\x00\xffbytes"})
    await sio.emit("file", (b"one", b"two"))
    await sio.emit("after", {"plain": True})  # published with, or after, the binary ones
    for client in (local, remote):
        await client.wait_event("after")
        assert client.events("file") == [{"name": "a.bin", "body": b"\x00\xffbytes"}, (b"one", b"two")]


async def _clients_of(url: str) -> list[str]:
    """The connections Redis holds, other than the one asking."""
    probe = aioredis.Redis.from_url(url)
    try:
        listed = await probe.client_list()
        me = await probe.client_id()
        return [c["addr"] for c in listed if int(c["id"]) != me]
    finally:
        await probe.aclose()


async def test_closing_an_app_releases_every_redis_connection(aiohttp_server, redis_server, client_on):
    server = await aiohttp_server(create_app(make_settings(redis_url=redis_server.url), storage=seeded_store()))
    client = await client_on(server, ANA)
    await client.settle()
    await server.app[SIO].emit("hello", "there")  # a publish, so every connection is in use
    await client.wait_event("hello")
    assert await _clients_of(redis_server.url)
    await client.sio.disconnect()
    await server.close()
    assert await _clients_of(redis_server.url) == []


async def _subscribers(url: str, channel: str) -> int:
    probe = aioredis.Redis.from_url(url)
    try:
        return int((await probe.pubsub_numsub(channel))[0][1])
    finally:
        await probe.aclose()


async def _wait_subscribed(url: str, channel: str) -> None:
    for _ in range(150):
        try:
            if await _subscribers(url, channel):
                return
        except (OSError, aioredis.RedisError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the node did not subscribe to its channel")


async def test_resubscribing_after_an_outage_keeps_one_client(aiohttp_server, redis_server, client_on, caplog):
    """Each attempt to resubscribe during an outage used to build a new Redis
    client (and pool) and leave the old one behind; after recovery the node
    holds one subscribing connection again, serves the other nodes' emits, and
    shutdown leaves nothing of it in Redis."""
    caplog.set_level(logging.CRITICAL, "cluster.redis_manager")
    server = await aiohttp_server(create_app(make_settings(redis_url=redis_server.url), storage=seeded_store()))
    client = await client_on(server, ANA)  # the first connection starts the manager
    manager = server.app[SIO].manager
    await _wait_subscribed(redis_server.url, manager.channel)
    redis_server.stop()
    await asyncio.sleep(3.5)  # attempts after 1 s and 2 s
    redis_server.start()
    await _wait_subscribed(redis_server.url, manager.channel)
    assert await _subscribers(redis_server.url, manager.channel) == 1
    # What another node publishes reaches this node's client again.
    other = await aiohttp_server(create_app(make_settings(redis_url=redis_server.url), storage=seeded_store()))
    await other.app[SIO].emit("hello", ("from", "elsewhere"))
    assert (await client.wait_event("hello"))[0] == ("from", "elsewhere")
    await client.sio.disconnect()
    await server.close()
    await other.close()
    assert await _clients_of(redis_server.url) == []


async def test_an_emit_that_is_not_json_does_not_take_the_others_of_its_batch_down(two_nodes, client_on, caplog):
    caplog.set_level(logging.CRITICAL)
    remote = await client_on(two_nodes[1], BEN)
    await client_on(two_nodes[0], ANA)  # the first connection starts the manager
    sio = two_nodes[0].app[SIO]
    # Emitted together, so published together; the set has no JSON form.
    results = await asyncio.gather(sio.emit("n", 0), sio.emit("n", {1, 2}), sio.emit("n", 1), sio.emit("n", 2),
                                   return_exceptions=True)
    assert isinstance(results[1], TypeError)  # the emitter hears of it
    await remote.wait_event("n", 3)
    await remote.settle()
    assert remote.events("n") == [0, 1, 2]
