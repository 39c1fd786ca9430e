"""State that several nodes share through Redis: presence and rate-limit buckets.

Presence entries expire unless their node refreshes them (``heartbeat``), so a
node that dies stops counting its users within ``ttl`` seconds; ``sweep``,
run by every node, then removes them, and exactly one node wins each removal
(it announces the user offline). While Redis is unreachable both classes fall
back to this node's own view, and ``heartbeat`` writes it back on recovery.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from .base import StorageUnavailable

log = logging.getLogger(__name__)

PREFIX = "chat:"
GROUPS_KEY = PREFIX + "presence:groups"

# KEYS: user key, group key, groups set. ARGV: now ms, expiry ms, member, user, group.
# Returns 1 when the user had no live connection in the group before.
_JOIN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
if before == 0 then return 1 else return 0 end
"""

# KEYS: user key, group key. ARGV: now ms, member (may be empty), user.
# Removes the member (if any) and expired entries; returns 1 when this call
# removed the user's last live entry from the group.
_LEAVE = """
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[1], ARGV[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #left == 0 then
  return redis.call('ZREM', KEYS[2], ARGV[3])
end
redis.call('ZADD', KEYS[2], left[2], ARGV[3])
return 0
"""

# Token bucket. KEYS: bucket key. ARGV: now ms, rate per s, burst.
# Returns 0 when a token was taken, else the milliseconds until one is there.
_BUCKET = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 't', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisConnection:
    """One Redis client per application, opened inside the app's event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: aioredis.Redis | None = None

    async def open(self) -> None:
        self.client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=10
        )
        await self.ping()

    async def ping(self) -> None:
        if self.client is None:
            raise StorageUnavailable("Redis is not connected")
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(f"Redis at REDIS_URL does not answer: {exc}") from exc

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class RedisPresence:
    """``Presence`` for several nodes: per user and group, a sorted set of
    ``node:sid`` entries scored by expiry, and per group a sorted set of users
    scored by their latest expiry."""

    def __init__(self, connection: RedisConnection, node_id: str, ttl_s: float = 15.0) -> None:
        self._redis = connection
        self.node_id = node_id
        self.ttl_ms = int(ttl_s * 1000)
        # This node's own entries: the fallback view and what heartbeats refresh.
        self._local: dict[str, dict[str, set[str]]] = {}
        self._join = self._leave = None

    def _client(self) -> aioredis.Redis:
        client = self._redis.client
        if client is None:
            raise StorageUnavailable("Redis is not connected")
        if self._join is None:
            self._join = client.register_script(_JOIN)
            self._leave = client.register_script(_LEAVE)
        return client

    @staticmethod
    def _keys(group_id: str, user_id: str) -> tuple[str, str]:
        return f"{PREFIX}presence:{group_id}:{user_id}", f"{PREFIX}presence:{group_id}"

    def _member(self, sid: str) -> str:
        return f"{self.node_id}:{sid}"

    async def join(self, group_id: str, user_id: str, sid: str) -> bool:
        sids = self._local.setdefault(group_id, {}).setdefault(user_id, set())
        locally_first = not sids
        sids.add(sid)
        try:
            self._client()
            now = _now_ms()
            user_key, group_key = self._keys(group_id, user_id)
            first = await self._join(
                keys=[user_key, group_key, GROUPS_KEY],
                args=[now, now + self.ttl_ms, self._member(sid), user_id, group_id],
            )
            return bool(first)
        except (RedisError, OSError, StorageUnavailable) as exc:
            log.warning("presence: Redis unavailable, using this node's view: %s", exc)
            return locally_first

    async def leave(self, group_id: str, user_id: str, sid: str) -> bool:
        users = self._local.get(group_id, {})
        sids = users.get(user_id, set())
        if sid not in sids:
            return False
        sids.discard(sid)
        if not sids:
            users.pop(user_id, None)
            if not users:
                self._local.pop(group_id, None)
        try:
            self._client()
            user_key, group_key = self._keys(group_id, user_id)
            last = await self._leave(keys=[user_key, group_key], args=[_now_ms(), self._member(sid), user_id])
            return bool(last)
        except (RedisError, OSError, StorageUnavailable) as exc:
            log.warning("presence: Redis unavailable, using this node's view: %s", exc)
            return not sids

    async def online(self, group_id: str) -> list[str]:
        try:
            client = self._client()
            users = await client.zrangebyscore(f"{PREFIX}presence:{group_id}", _now_ms(), "+inf")
            return sorted(u.decode() for u in users)
        except (RedisError, OSError, StorageUnavailable) as exc:
            log.warning("presence: Redis unavailable, using this node's view: %s", exc)
            return sorted(self._local.get(group_id, {}))

    async def heartbeat(self) -> None:
        """Extend (or, after an outage, restore) every entry of this node."""
        client = self._client()
        now = _now_ms()
        expiry = now + self.ttl_ms
        async with client.pipeline(transaction=False) as pipe:
            for group_id, users in self._local.items():
                for user_id, sids in users.items():
                    user_key, group_key = self._keys(group_id, user_id)
                    pipe.zadd(user_key, {self._member(sid): expiry for sid in sids})
                    pipe.pexpireat(user_key, expiry)
                    pipe.zadd(group_key, {user_id: expiry}, gt=True)
                    pipe.sadd(GROUPS_KEY, group_id)
            await pipe.execute()

    async def sweep(self) -> list[tuple[str, str]]:
        """Remove users whose every entry expired (their node died).

        Returns the ``(group_id, user_id)`` pairs this node removed, each of
        which no other node also gets: announce them offline.
        """
        client = self._client()
        now = _now_ms()
        removed: list[tuple[str, str]] = []
        for raw_group in await client.smembers(GROUPS_KEY):
            group_id = raw_group.decode()
            group_key = f"{PREFIX}presence:{group_id}"
            for raw_user in await client.zrangebyscore(group_key, "-inf", now):
                user_id = raw_user.decode()
                user_key, _ = self._keys(group_id, user_id)
                if await self._leave(keys=[user_key, group_key], args=[now, "", user_id]):
                    removed.append((group_id, user_id))
            if not await client.zcard(group_key):
                await client.srem(GROUPS_KEY, group_id)
        return removed


class RedisLimiter:
    """Token buckets shared by all nodes; falls back to ``fallback`` without Redis.

    The checks made in one event-loop iteration go to Redis together, as one
    pipeline of bucket scripts (one round trip and one write however many
    events arrived at once); each still takes its own token, in order."""

    def __init__(self, connection: RedisConnection, limits, fallback) -> None:
        self._redis = connection
        self._limits = limits
        self._fallback = fallback
        self._sha: str | None = None
        self._batch: list[tuple[str, list, asyncio.Future]] = []

    async def check(self, user_id: str, event: str) -> int | None:
        kind, bucket = self._limits.bucket_for(event)
        if not bucket.enabled:
            return None
        client = self._redis.client
        if client is None:
            return await self._fallback.check(user_id, event)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch, client)
        self._batch.append((f"{PREFIX}rate:{kind}:{user_id}", [_now_ms(), bucket.rate, bucket.burst], answer))
        try:
            wait = await answer
        except (RedisError, OSError):
            return await self._fallback.check(user_id, event)
        return int(wait) or None

    def _send_batch(self, client) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._run_batch(client, batch))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _run_batch(self, client, batch: list[tuple[str, list, asyncio.Future]]) -> None:
        try:
            results = await self._evaluate(client, batch)
        except BaseException as exc:  # every check of the batch falls back to this node's buckets
            _answer(batch, [exc] * len(batch))
            if not isinstance(exc, Exception):
                raise
            return
        _answer(batch, results)

    async def _evaluate(self, client, batch) -> list:
        """The bucket script for each check, in one pipeline; loads the script
        first, and again when Redis lost it (a restart)."""
        if self._sha is None:
            self._sha = await client.script_load(_BUCKET)
        results = await self._pipeline(client, batch)
        if any(isinstance(r, NoScriptError) for r in results):
            self._sha = await client.script_load(_BUCKET)
            results = await self._pipeline(client, batch)
        return results

    async def _pipeline(self, client, batch) -> list:
        async with client.pipeline(transaction=False) as pipe:
            for key, args, _ in batch:
                pipe.evalsha(self._sha, 1, key, *args)
            return await pipe.execute(raise_on_error=False)


def _answer(batch: list[tuple[str, list, asyncio.Future]], results: list) -> None:
    """Each check's answer: the script's result, or an error that makes it fall back."""
    for (*_, answer), result in zip(batch, results):
        if answer.done():
            continue
        if isinstance(result, BaseException):
            answer.set_exception(result if isinstance(result, (RedisError, OSError)) else RedisError(repr(result)))
        else:
            answer.set_result(result)


_background: set[asyncio.Task] = set()
