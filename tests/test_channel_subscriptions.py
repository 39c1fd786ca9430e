"""``cluster.channels.Subscriptions`` against a real redis-server and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import urllib.parse

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


class _Relay:
    """A TCP relay in front of a redis-server that can cut its connections, refuse new
    ones, or hold them (accepted, nothing forwarded) until it passes again: Redis as a
    node sees it while its pub/sub connection is being made again."""

    def __init__(self, url: str) -> None:
        self.upstream = urllib.parse.urlsplit(url).port
        self.refusing = False
        self.passing = asyncio.Event()
        self.passing.set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self.writers.add(writer)
        await self.passing.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers.add(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut_and_refuse(self) -> None:
        self.refusing = True
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def hold(self) -> None:
        self.refusing = False
        self.passing.clear()

    def release(self) -> None:
        self.refusing = False
        self.passing.set()

    async def close(self) -> None:
        self.cut_and_refuse()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.parametrize("queue", ["single"], indirect=True)
async def test_a_channel_watched_while_redis_cannot_confirm_it_is_caught_up_once_confirmed(queue):
    """A join whose watch returns before Redis confirmed its channel (Redis was
    unreachable, and is slow to answer while the node connects again) reads storage
    while the channel is not heard: once the channel is confirmed it is told, like the
    channels that were lost, so what was published in between is read from storage. It
    was subscribed silently, and what was sent in between never reached that node."""
    again: set[bytes] = set()

    async def on_message(data: bytes) -> None:
        pass

    relay = _Relay(queue.url)
    subscriptions = Subscriptions(await relay.start(), sharded=False, on_message=on_message,
                                  on_resubscribed=again.update)
    held, joined_meanwhile = group_channel(GROUPS[0]), group_channel(GROUPS[1])
    try:
        await subscriptions.watch(held)
        relay.cut_and_refuse()  # the node's pub/sub connection breaks; Redis is unreachable...
        await asyncio.sleep(0.1)
        relay.hold()  # ...then takes connections but answers nothing yet
        await asyncio.sleep(0.4)  # the node is connecting again (after its 0.25 s pause)
        started = asyncio.get_running_loop().time()
        await subscriptions.watch(joined_meanwhile)
        assert asyncio.get_running_loop().time() - started < 0.5  # Redis is down: the join is not held
        relay.release()
        for _ in range(100):
            if len(again) == 2:
                break
            await asyncio.sleep(0.05)
        assert again == {held.encode(), joined_meanwhile.encode()}
    finally:
        await subscriptions.close()
        await relay.close()
