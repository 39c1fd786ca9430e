"""``Subscriptions``: the Redis channels this node listens to, on whichever
Redis holds each.

A node listens to one channel shared by every node (notices, and emits that
are not for one group) and to the channel of each group one of its
connections is in (``watch``, ``unwatch``). ``watch`` returns once Redis
confirmed the subscription, so a join that reads storage afterwards cannot
miss a change published in between.

On a single Redis (or behind Sentinel) the channels are classic ones
(``SUBSCRIBE``, one connection). On a Redis Cluster they are shard channels
(``SSUBSCRIBE``): a channel lives in the hash slot of its name, so this node
keeps one pub/sub connection per master that owns a channel it needs. When a
connection breaks (its master died) or Redis moves a channel away (a
``sunsubscribe`` this node did not ask for), the slot map is read again and
the channels go to their new owner, retried with a growing pause until they
are confirmed; ``on_resubscribed`` is then told which channels came back, so
what was published meanwhile can be read from storage. It is told the same of
a channel whose ``watch`` returned before Redis confirmed it (Redis was down,
or slow to answer): the join behind that watch read storage while the channel
was not heard yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .redis_scripts import by_slot, close_client, redis_client

log = logging.getLogger(__name__)

CONFIRM_WAIT_S = 2.0  # how long a watch waits for Redis to confirm, when Redis answers at all
MIN_PAUSE_S, MAX_PAUSE_S = 0.25, 10.0

OnMessage = Callable[[bytes], Awaitable[None]]
OnResubscribed = Callable[[set[bytes]], None]


class _Shard:
    """One pub/sub connection to one Redis, and the channels wanted there."""

    def __init__(self, owner: Subscriptions, name: str, client: aioredis.Redis) -> None:
        self.owner = owner
        self.name = name
        self.client = client
        self.channels: set[bytes] = set()
        self.confirmed: set[bytes] = set()  # channels Redis confirmed on the current connection
        self.leaving: set[bytes] = set()  # unsubscribed, the reply not read yet
        # Channels a watch stopped waiting for before Redis confirmed them: once
        # confirmed, they are told as resubscribed (what was missed is read from storage).
        self.owed: set[bytes] = set()
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.pubsub: Any = None
        self.connected = False
        self.down = False  # the last attempt to connect or read failed
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    def want(self, channel: bytes) -> asyncio.Future[None]:
        """Ask for ``channel`` here; the future is done once Redis confirmed it."""
        loop = asyncio.get_running_loop()
        future = self.waiting.get(channel)
        if future is None or future.done():
            future = self.waiting[channel] = loop.create_future()
        if channel in self.confirmed and channel in self.channels:
            future.set_result(None)
            return future
        self.channels.add(channel)
        if self.connected and self.pubsub is not None:
            asyncio.ensure_future(self._command(self.owner.subscribe_command, channel))
        self.wake.set()
        return future

    def drop(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self.confirmed.discard(channel)
        self.owed.discard(channel)
        waiting = self.waiting.pop(channel, None)
        if waiting is not None and not waiting.done():
            waiting.cancel()
        if self.connected and self.pubsub is not None:
            self.leaving.add(channel)  # its unsubscribe's reply is not a moved slot
            asyncio.ensure_future(self._command(self.owner.unsubscribe_command, channel))

    async def _command(self, command: str, channel: bytes) -> None:
        pubsub = self.pubsub
        if pubsub is None:
            return  # the reader is connecting again: it subscribes every wanted channel
        try:
            await pubsub.execute_command(command, channel)
        except (RedisError, OSError) as exc:  # the reader sees the broken connection and starts again
            log.debug("%s %r on %s failed: %s", command, channel, self.name, exc)

    async def _run(self) -> None:
        """Connect, subscribe every wanted channel, read; start again after errors."""
        pause = MIN_PAUSE_S
        first = True
        while True:
            if not self.channels:
                self.wake.clear()
                await self.wake.wait()
                continue
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=False)
            try:
                again = set(self.channels)
                for batch in self.owner.batches(again):
                    await self.pubsub.execute_command(self.owner.subscribe_command, *batch)
                # Channels wanted while this connected: from now on ``want`` sends its own.
                late = self.channels - again
                self.connected, self.down = True, False
                for batch in self.owner.batches(late):
                    await self.pubsub.execute_command(self.owner.subscribe_command, *batch)
                while self.channels or self.pubsub.subscribed:
                    message = await self.pubsub.parse_response(block=True)
                    if message is not None:
                        await self._take(message, again if not first else None)
                        pause = MIN_PAUSE_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.down = True
                if self.channels:
                    log.error("Redis pub/sub on %s lost (%s); subscribing again in %.2f s", self.name, exc, pause)
                await self._reset()
                first = False
                self.owner.topology_changed(self)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            await self._reset()

    async def _take(self, response: Any, again: set[bytes] | None) -> None:
        if not isinstance(response, list) or len(response) < 2:
            return
        kind = response[0]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind in ("message", "smessage"):
            await self.owner.on_message(response[2])
            return
        channel = response[1]
        if kind in ("subscribe", "ssubscribe"):
            if channel not in self.channels:
                return
            self.confirmed.add(channel)
            waiting = self.waiting.pop(channel, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            late = channel in self.owed or (again is not None and channel in again)
            if again is not None:
                again.discard(channel)
            if late:
                self.owed.discard(channel)
                self.owner.resubscribed({channel})
        elif kind in ("unsubscribe", "sunsubscribe"):
            if channel in self.leaving:  # the answer to this node's own unsubscribe
                self.leaving.discard(channel)
                return
            self.confirmed.discard(channel)
            if channel in self.channels and kind == "sunsubscribe":
                # Redis moved the channel's slot to another master.
                log.warning("Redis moved shard channel %r away from %s; following it", channel, self.name)
                self.channels.discard(channel)
                self.owner.moved([channel])

    async def _reset(self) -> None:
        self.connected = False
        self.confirmed.clear()
        self.leaving.clear()
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as exc:
                log.debug("closing the pub/sub on %s: %s", self.name, exc)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._reset()
        for future in self.waiting.values():
            if not future.done():
                future.cancel()
        await close_client(self.client)


class Subscriptions:
    """The channels this node listens to (see the module's description)."""

    def __init__(self, url: str, *, sharded: bool, on_message: OnMessage, on_resubscribed: OnResubscribed) -> None:
        self.url = url
        self.sharded = sharded
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        # No retries inside the client: a pub/sub connection it re-opened by
        # itself would listen to nothing, unnoticed. The reader starts again.
        # RESP2: a channel message is a plain reply there; RESP3's push handling
        # costs more per message, and a node reads every one.
        self.options: dict[str, Any] = {"socket_connect_timeout": 2, "protocol": 2, "retry": Retry(NoBackoff(), 0)}
        self.subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._cluster: RedisCluster | None = None
        self._shards: dict[str, _Shard] = {}
        self._home: dict[bytes, _Shard] = {}  # channel -> the shard it is wanted on
        self._rehoming: asyncio.Task[None] | None = None
        self._topology_lock = asyncio.Lock()
        self._unplaced: set[bytes] = set()  # wanted, but the cluster's slot map could not be read
        self._placing: asyncio.Task[None] | None = None
        # Channels confirmed again after a connection or a slot was lost, or confirmed
        # after their watch stopped waiting.
        self.resubscriptions = 0

    def batches(self, channels: set[bytes]) -> list[list[bytes]]:
        """``channels`` in groups one (S)SUBSCRIBE can take: shard channels of one
        hash slot at a time, classic channels all at once."""
        if not channels:
            return []
        return by_slot(sorted(channels), lambda channel: channel) if self.sharded else [sorted(channels)]

    async def watch(self, channel: str | bytes) -> None:
        """Listen to ``channel``; returns once Redis confirmed it (or at once
        while Redis is unreachable: the subscription is made when it is back)."""
        name = _bytes(channel)
        shard = self._home.get(name)
        if shard is None:
            try:
                shard = await self._shard_for(name)
            except Exception as exc:  # the cluster cannot be read now: place it later
                log.warning("cannot place channel %r now (%s); trying again", name, exc)
                self._unplaced.add(name)
                self._place_later()
                return
            if self._home.get(name) is None:
                self._home[name] = shard
            shard = self._home[name]
        future = shard.want(name)
        if not shard.down:  # when this Redis is down right now, do not hold the join
            try:
                await asyncio.wait_for(asyncio.shield(future), CONFIRM_WAIT_S)
            except TimeoutError:
                log.warning("Redis did not confirm the subscription to %r within %.0f s", name, CONFIRM_WAIT_S)
        if not future.done() and self._home.get(name) is shard:
            shard.owed.add(name)  # caught up from storage once it is confirmed

    def _place_later(self) -> None:
        if self._placing is not None and not self._placing.done():
            return

        async def place() -> None:
            pause = MIN_PAUSE_S
            while self._unplaced:
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
                for name in list(self._unplaced):
                    try:
                        shard = await self._shard_for(name)
                    except Exception as exc:
                        log.debug("cannot place channel %r yet: %s", name, exc)
                        break
                    if name not in self._unplaced:
                        continue  # unwatched meanwhile
                    self._unplaced.discard(name)
                    self._home[name] = shard
                    # What was published before it was placed is read from storage.
                    shard.want(name).add_done_callback(functools.partial(self._confirmed_again, name))

        self._placing = asyncio.ensure_future(place())

    def unwatch(self, channel: str | bytes) -> None:
        """Stop listening to ``channel``."""
        self._unplaced.discard(_bytes(channel))
        shard = self._home.pop(_bytes(channel), None)
        if shard is not None:
            shard.drop(_bytes(channel))

    async def _shard_for(self, channel: bytes) -> _Shard:
        if not self.sharded:
            return self._shard("redis", lambda: redis_client(self.url, **self.options))
        cluster = await self._topology()
        node = cluster.get_node_from_key(channel.decode(errors="surrogateescape"))
        if node is None:
            raise RedisError(f"no Redis Cluster node serves the slot of {channel!r}")
        host, port = node.host, int(node.port)
        return self._shard(node.name, lambda: aioredis.Redis(host=host, port=port, **self.options))

    def _shard(self, name: str, connect: Callable[[], aioredis.Redis]) -> _Shard:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard(self, name, connect())
        return shard

    async def _topology(self, *, refresh: bool = False) -> RedisCluster:
        """The cluster's slot map (read once, and again on ``refresh``); one reader at a time."""
        async with self._topology_lock:
            if self._cluster is None:
                cluster = RedisCluster.from_url(self.url, **self.options)
                try:
                    await cluster.initialize()
                except BaseException:
                    await cluster.aclose()
                    raise
                self._cluster = cluster
            elif refresh:
                await self._cluster.nodes_manager.initialize()
            return self._cluster

    def resubscribed(self, channels: set[bytes]) -> None:
        self.resubscriptions += len(channels)
        self.on_resubscribed(channels)

    def topology_changed(self, shard: _Shard) -> None:
        """A shard's connection broke: on a cluster its channels may have a new owner."""
        if self.sharded:
            self.moved(list(shard.channels))

    def moved(self, channels: Iterable[bytes]) -> None:
        pending = [c for c in channels if c in self._home]
        if not pending:
            return
        previous = self._rehoming

        async def rehome() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await self._topology(refresh=True)
            except (RedisError, OSError) as exc:
                log.warning("cannot read the Redis Cluster's slots (%s); keeping the old map for now", exc)
            for channel in pending:
                old = self._home.get(channel)
                if old is None:
                    continue  # released meanwhile
                try:
                    new = await self._shard_for(channel)
                except (RedisError, OSError) as exc:
                    log.warning("cannot place channel %r (%s)", channel, exc)
                    continue
                # Back on the shard whose connection broke: its reader resubscribes it
                # and says so. Anywhere else, this says so once it is confirmed.
                stays = new is old and channel in old.channels
                if new is not old:
                    old.channels.discard(channel)
                    old.confirmed.discard(channel)
                    old.owed.discard(channel)  # its confirmation there is told below
                    self._home[channel] = new
                confirmed = new.want(channel)
                if not stays:
                    confirmed.add_done_callback(functools.partial(self._confirmed_again, channel))
            await self._close_idle()

        self._rehoming = asyncio.ensure_future(rehome())

    def _confirmed_again(self, channel: bytes, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and self._home.get(channel) is not None:
            self.resubscribed({channel})

    async def _close_idle(self) -> None:
        for name, shard in list(self._shards.items()):
            if not shard.channels and not any(s is shard for s in self._home.values()):
                del self._shards[name]
                await shard.close()

    async def close(self) -> None:
        for task in (self._rehoming, self._placing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._unplaced.clear()
        shards, self._shards = list(self._shards.values()), {}
        self._home.clear()
        for shard in shards:
            await shard.close()
        if self._cluster is not None:
            await self._cluster.aclose()
            self._cluster = None


def _bytes(channel: str | bytes) -> bytes:
    return channel if isinstance(channel, bytes) else channel.encode()
