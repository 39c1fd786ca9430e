"""State that several nodes share through Redis: presence and rate-limit buckets.

Presence entries expire unless their node refreshes them (``heartbeat``), so a
node that dies stops counting its users within ``ttl`` seconds; ``sweep``,
run by every node, then removes them, and exactly one node wins each removal
(it announces the user offline). While Redis is unreachable both classes fall
back to this node's own view, and ``heartbeat`` writes it back on recovery.
"""

from __future__ import annotations

import asyncio
import hashlib
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

# Token buckets, one check per key, in order. KEYS: bucket keys. ARGV: now ms,
# then rate per s and burst for each key. Returns, per key, 0 when a token was
# taken, else the milliseconds until one is there.
_BUCKETS = """
local now = tonumber(ARGV[1])
local waits = {}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil then tokens, at = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  local wait = 0
  if tokens < 1 then
    wait = math.ceil((1 - tokens) * 1000 / rate)
  else
    tokens = tokens - 1
  end
  redis.call('HSET', key, 't', tokens, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  waits[i] = wait
end
return waits
"""

# ARGV: channel, the messages end to end, their lengths in bytes ("12,40,7").
# Publishes each, in order (one argument however many, so the client packs
# three strings per batch); returns their number.
_PUBLISH_ALL = """
local blob, at, n = ARGV[2], 1, 0
for size in string.gmatch(ARGV[3], '%d+') do
  size = tonumber(size)
  redis.call('PUBLISH', ARGV[1], string.sub(blob, at, at + size - 1))
  at, n = at + size, n + 1
end
return n
"""

SCRIPT_BATCH = 500  # checks folded into one script call


class Script:
    """A Lua script, called by its SHA1 (Redis loads it again when it lost it)."""

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()


BUCKETS, PUBLISH_ALL = Script(_BUCKETS), Script(_PUBLISH_ALL)


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisConnection:
    """One Redis client per application, opened inside the app's event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: aioredis.Redis | None = None
        self._calls: list[tuple[Script, list, list, asyncio.Future]] = []
        self._busy = False  # a round of calls is scheduled or awaiting its replies

    def call(self, script: Script, keys: list, args: list) -> asyncio.Future:
        """Call ``script``; the future gets its result, or a ``RedisError`` or
        ``OSError``. Calls leave in rounds, in order: one pipeline (one write,
        one round trip) with every call made since the previous round left,
        and one round at a time, so the busier the node, the fuller each."""
        client = self.client
        if client is None:
            raise StorageUnavailable("Redis is not connected")
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._calls.append((script, keys, args, answer))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._send, client)
        return answer

    def _send(self, client) -> None:
        calls, self._calls = self._calls, []
        task = asyncio.ensure_future(self._run(client, calls))
        _background.add(task)
        task.add_done_callback(_background.discard)
        task.add_done_callback(lambda _: self._next(client))

    def _next(self, client) -> None:
        if self._calls:
            self._send(client)
        else:
            self._busy = False

    async def _run(self, client, calls: list[tuple[Script, list, list, asyncio.Future]]) -> None:
        try:
            results = await _pipeline(client, calls)
            lost = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if lost:  # Redis restarted: load the scripts, call those again
                for script in {calls[i][0] for i in lost}:
                    await client.script_load(script.lua)
                for i, result in zip(lost, await _pipeline(client, [calls[i] for i in lost])):
                    results[i] = result
        except BaseException as exc:
            for *_, answer in calls:
                _settle(answer, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, answer), result in zip(calls, results):
            _settle(answer, result)

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
    call of the bucket script (up to ``SCRIPT_BATCH`` checks per call); each
    still takes its own token, in order."""

    def __init__(self, connection: RedisConnection, limits, fallback) -> None:
        self._redis = connection
        self._limits = limits
        self._fallback = fallback
        self._batch: list[tuple[str, float, float, asyncio.Future]] = []

    async def check(self, user_id: str, event: str) -> int | None:
        kind, bucket = self._limits.bucket_for(event)
        if not bucket.enabled:
            return None
        if self._redis.client is None:
            return await self._fallback.check(user_id, event)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch)
        self._batch.append((f"{PREFIX}rate:{kind}:{user_id}", bucket.rate, bucket.burst, answer))
        try:
            wait = await answer
        except (RedisError, OSError, StorageUnavailable):
            return await self._fallback.check(user_id, event)
        return int(wait) or None

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        now = _now_ms()
        for start in range(0, len(batch), SCRIPT_BATCH):
            chunk = batch[start:start + SCRIPT_BATCH]
            args = [now, *(x for _, rate, burst, _ in chunk for x in (rate, burst))]
            try:
                waits = self._redis.call(BUCKETS, [key for key, *_ in chunk], args)
            except StorageUnavailable as exc:
                for *_, answer in chunk:
                    _settle(answer, exc)
                continue
            waits.add_done_callback(lambda done, chunk=chunk: _answer_each(chunk, done))


async def _pipeline(client, calls) -> list:
    """Each call's result, or its error, in order."""
    pipe = client.pipeline(transaction=False)
    for script, keys, args, _ in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return await pipe.execute(raise_on_error=False)


def _settle(answer: asyncio.Future, result) -> None:
    """A call's answer: its result, or an error its caller falls back from."""
    if answer.done():
        return
    if isinstance(result, BaseException):
        answer.set_exception(result if isinstance(result, (RedisError, OSError, StorageUnavailable))
                             else RedisError(repr(result)))
    else:
        answer.set_result(result)


def _answer_each(chunk: list[tuple[str, float, float, asyncio.Future]], done: asyncio.Future) -> None:
    """The bucket script's answers, one per check of ``chunk``."""
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    waits = done.result() if error is None else None
    for i, (*_, answer) in enumerate(chunk):
        _settle(answer, error if error is not None else waits[i])


_background: set[asyncio.Task] = set()
