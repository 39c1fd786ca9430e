"""One way of calling Redis: Lua scripts by SHA1, in pipelined rounds, on one
connection per application (``RedisConnection``)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from storage.base import StorageUnavailable

PREFIX = "chat:"
T = TypeVar("T")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

# KEYS: the channel (a key for a cluster's routing). ARGV: PUBLISH or SPUBLISH,
# the messages end to end, their lengths in bytes ("12,40,7"). Publishes each,
# in order (one argument however many, so the client packs three strings per
# batch); returns their number.
_PUBLISH_ALL = """
local blob, at, n = ARGV[2], 1, 0
for size in string.gmatch(ARGV[3], '%d+') do
  size = tonumber(size)
  redis.call(ARGV[1], KEYS[1], string.sub(blob, at, at + size - 1))
  at, n = at + size, n + 1
end
return n
"""

class Script:
    """A Lua script, called by its SHA1 (Redis loads it again when it lost it)."""

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()


PUBLISH_ALL = Script(_PUBLISH_ALL)


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url``: what redis-py's ``from_url`` takes (``redis://``,
    ``rediss://``, ``unix://``), or
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the
    master the sentinels name for ``service``, asked again whenever a connection
    is made, so a fail-over is followed (``rediss+sentinel`` for TLS to the master).
    ``close_client`` closes it with its sentinel connections."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        return aioredis.Redis.from_url(url, **options)
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        sentinels.append((name, int(port or 26379)))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("a redis+sentinel URL names the service after the hosts: .../mymaster")
    timeouts = {k: v for k, v in options.items() if k in ("socket_connect_timeout", "socket_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts)
    client = sentinel.master_for(unquote(service), db=int(db or 0), password=password,
                                 ssl=scheme == "rediss+sentinel", **options)
    _sentinels[id(client)] = sentinel
    return client


async def close_client(client: Any) -> None:
    """Close a client of ``redis_client`` (or any redis-py client), with its sentinels' connections."""
    await client.aclose()
    sentinel = _sentinels.pop(id(client), None)
    if sentinel is not None:
        for connection in sentinel.sentinels:
            await connection.aclose()


_sentinels: dict[int, Sentinel] = {}


def by_slot(items: Iterable[T], key: Callable[[T], bytes]) -> list[list[T]]:
    """``items`` grouped by the Redis Cluster hash slot of ``key(item)``, each group
    in the items' order (what one script call or one SSUBSCRIBE may take)."""
    slots: dict[int, list[T]] = {}
    for item in items:
        slots.setdefault(key_slot(key(item)), []).append(item)
    return list(slots.values())


def now_ms() -> int:
    return int(time.time() * 1000)

class RedisConnection:
    """One Redis client per application, opened inside the app's event loop."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster  # ``url`` names a node of a Redis Cluster
        self.client: Any = None  # redis.asyncio's Redis, or its RedisCluster
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
                settle(answer, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, answer), result in zip(calls, results):
            settle(answer, result)

    async def open(self) -> None:
        options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
        if self.cluster:
            self.client = RedisCluster.from_url(self.url, **options)
            try:
                await self.client.initialize()
            except (RedisError, OSError) as exc:
                raise StorageUnavailable(f"the Redis Cluster at REDIS_URL does not answer: {exc}") from exc
        else:
            self.client = redis_client(self.url, health_check_interval=10, **options)
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
            await close_client(self.client)
            self.client = None

async def _pipeline(client, calls) -> list:
    """Each call's result, or its error, in order."""
    pipe = client.pipeline(transaction=False)
    for script, keys, args, _ in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return await pipe.execute(raise_on_error=False)


def settle(answer: asyncio.Future, result) -> None:
    """A call's answer: its result, or an error its caller falls back from."""
    if answer.done():
        return
    if isinstance(result, BaseException):
        answer.set_exception(result if isinstance(result, (RedisError, OSError, StorageUnavailable))
                             else RedisError(repr(result)))
    else:
        answer.set_result(result)

_background: set[asyncio.Task] = set()
