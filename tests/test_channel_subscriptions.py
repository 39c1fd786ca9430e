"""``cluster.channels.Subscriptions`` against a real redis-server and a real Redis Cluster."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cluster.channels import Subscriptions
from cluster.redis_manager import group_channel

GROUPS = [f"65b0000000000000000{i:05x}" for i in range(40)]


async def _publisher(queue):
    if queue.kind == "cluster":
        client = RedisCluster.from_url(queue.url)
        await client.initialize()
        return client, "SPUBLISH"
    return aioredis.Redis.from_url(queue.url), "PUBLISH"


async def test_channels_watched_at_once_while_connecting_are_all_subscribed(queue):
    """Many joins arrive while the first subscription's connection is still being
    made (a node's first seconds); each channel is confirmed and hears its messages.
    On a cluster the channels fall in many hash slots of each master."""
    received: list[bytes] = []

    async def on_message(data: bytes) -> None:
        received.append(data)

    subscriptions = Subscriptions(queue.url, sharded=queue.kind == "cluster", on_message=on_message,
                                  on_resubscribed=lambda channels: None)
    channels = ["socketio", *(group_channel(g) for g in GROUPS)]
    if queue.kind == "cluster":
        assert len({key_slot(c.encode()) for c in channels}) > 10
    publisher, command = await _publisher(queue)
    try:
        await asyncio.wait_for(asyncio.gather(*(subscriptions.watch(c) for c in channels)), 10)
        for channel in channels:
            await publisher.execute_command(command, channel, channel.encode())
        for _ in range(100):
            if len(received) >= len(channels):
                break
            await asyncio.sleep(0.05)
        assert sorted(received) == sorted(c.encode() for c in channels)

        # Unwatched channels are heard no more; the others still are.
        for channel in channels[1:21]:
            subscriptions.unwatch(channel)
        await asyncio.sleep(0.2)
        received.clear()
        for channel in channels:
            await publisher.execute_command(command, channel, channel.encode())
        await asyncio.sleep(0.5)
        assert sorted(received) == sorted(c.encode() for c in channels[:1] + channels[21:])
    finally:
        await publisher.aclose()
        await subscriptions.close()


async def test_a_channel_unwatched_and_watched_again_at_once_keeps_working(queue, caplog):
    """The unsubscribe's reply arriving after the new subscribe is not taken for a
    slot Redis moved away, and the channel ends up subscribed."""
    received: list[bytes] = []

    async def on_message(data: bytes) -> None:
        received.append(data)

    subscriptions = Subscriptions(queue.url, sharded=queue.kind == "cluster", on_message=on_message,
                                  on_resubscribed=lambda channels: None)
    channel = group_channel(GROUPS[0])
    publisher, command = await _publisher(queue)
    try:
        await subscriptions.watch(channel)
        for _ in range(3):
            subscriptions.unwatch(channel)
            await subscriptions.watch(channel)
        await asyncio.sleep(0.3)
        await publisher.execute_command(command, channel, b"still here")
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received == [b"still here"]
        assert "moved" not in caplog.text
    finally:
        await publisher.aclose()
        await subscriptions.close()


@pytest.mark.parametrize("queue", ["single"], indirect=True)
async def test_a_restarted_redis_gets_every_channel_back_and_says_which(queue):
    received: list[bytes] = []
    again: set[bytes] = set()

    async def on_message(data: bytes) -> None:
        received.append(data)

    subscriptions = Subscriptions(queue.url, sharded=False, on_message=on_message, on_resubscribed=again.update)
    channels = [group_channel(g) for g in GROUPS[:5]]
    try:
        await asyncio.gather(*(subscriptions.watch(c) for c in channels))
        queue.stop()
        await asyncio.sleep(0.5)
        queue.start()
        for _ in range(100):
            if len(again) == len(channels):
                break
            await asyncio.sleep(0.1)
        assert again == {c.encode() for c in channels}
        publisher = aioredis.Redis.from_url(queue.url)
        try:
            for channel in channels:
                await publisher.publish(channel, b"after")
        finally:
            await publisher.aclose()
        for _ in range(50):
            if len(received) == len(channels):
                break
            await asyncio.sleep(0.05)
        assert received == [b"after"] * len(channels)
    finally:
        await subscriptions.close()
