"""Presence: who has a connection in a group's room right now.

``LocalPresence`` serves one process. ``RedisPresence`` serves several nodes:
its entries expire unless their node refreshes them (``heartbeat``), so a node
that dies stops counting its users within ``ttl`` seconds; ``sweep``, run by
every node, then removes them, and exactly one node wins each removal (it
announces the user offline). While Redis is unreachable it falls back to this
node's own view, and ``heartbeat`` writes it back on recovery.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from storage.base import StorageUnavailable

from .redis_scripts import PREFIX, RedisConnection, Script, now_ms

log = logging.getLogger(__name__)

GROUPS_KEY = PREFIX + "presence:groups"


class LocalPresence:
    """Presence for a single process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = {}

    async def join(self, group_id: str, user_id: str, sid: str) -> bool:
        users = self._rooms.setdefault(group_id, {})
        sids = users.setdefault(user_id, set())
        first = not sids
        sids.add(sid)
        return first

    async def leave(self, group_id: str, user_id: str, sid: str) -> bool:
        users = self._rooms.get(group_id)
        if not users or sid not in users.get(user_id, ()):
            return False
        sids = users[user_id]
        sids.discard(sid)
        if sids:
            return False
        del users[user_id]
        if not users:
            del self._rooms[group_id]
        return True

    async def online(self, group_id: str) -> list[str]:
        return sorted(self._rooms.get(group_id, {}))


# KEYS: user key, group key (one hash slot). ARGV: now ms, expiry ms, member, user.
# Returns 1 when the user had no live connection in the group before.
_JOIN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[4])
if before == 0 then return 1 else return 0 end
"""

# KEYS: the set of groups with presence. ARGV: group. (Its own call: on a
# Redis Cluster the set lives in another hash slot than the group's keys.)
_LIST_GROUP = "return redis.call('SADD', KEYS[1], ARGV[1])"

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

JOIN, LEAVE, LIST_GROUP = Script(_JOIN), Script(_LEAVE), Script(_LIST_GROUP)


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

    def _client(self) -> aioredis.Redis:
        client = self._redis.client
        if client is None:
            raise StorageUnavailable("Redis is not connected")
        return client

    @staticmethod
    def _keys(group_id: str, user_id: str) -> tuple[str, str]:
        group_key = _group_key(group_id)
        return f"{group_key}:{user_id}", group_key

    def _member(self, sid: str) -> str:
        return f"{self.node_id}:{sid}"

    async def join(self, group_id: str, user_id: str, sid: str) -> bool:
        sids = self._local.setdefault(group_id, {}).setdefault(user_id, set())
        locally_first = not sids
        sids.add(sid)
        try:
            now = now_ms()
            user_key, group_key = self._keys(group_id, user_id)
            results: list[object] = await asyncio.gather(  # one round trip
                self._redis.call(JOIN, [user_key, group_key], [now, now + self.ttl_ms, self._member(sid), user_id]),
                self._redis.call(LIST_GROUP, [GROUPS_KEY], [group_id]),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return bool(results[0])
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
            user_key, group_key = self._keys(group_id, user_id)
            last = await self._redis.call(LEAVE, [user_key, group_key], [now_ms(), self._member(sid), user_id])
            return bool(last)
        except (RedisError, OSError, StorageUnavailable) as exc:
            log.warning("presence: Redis unavailable, using this node's view: %s", exc)
            return not sids

    async def online(self, group_id: str) -> list[str]:
        try:
            client = self._client()
            users = await client.zrangebyscore(_group_key(group_id), now_ms(), "+inf")
            return sorted(_text(u) for u in users)
        except (RedisError, OSError, StorageUnavailable) as exc:
            log.warning("presence: Redis unavailable, using this node's view: %s", exc)
            return sorted(self._local.get(group_id, {}))

    async def heartbeat(self) -> None:
        """Extend (or, after an outage, restore) every entry of this node."""
        client = self._client()
        now = now_ms()
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
        now = now_ms()
        removed: list[tuple[str, str]] = []
        for raw_group in await client.smembers(GROUPS_KEY):
            group_id = _text(raw_group)
            group_key = _group_key(group_id)
            for raw_user in await client.zrangebyscore(group_key, "-inf", now):
                user_id = _text(raw_user)
                user_key, _ = self._keys(group_id, user_id)
                if await self._redis.call(LEAVE, [user_key, group_key], [now, "", user_id]):
                    removed.append((group_id, user_id))
            if not await client.zcard(group_key):
                await client.srem(GROUPS_KEY, group_id)
        return removed


def _group_key(group_id: str) -> str:
    """A group's presence key; its hash tag is the group's channel's (``redis_manager.group_channel``)."""
    return f"{PREFIX}{{g:{group_id}}}:presence"


def _text(value: object) -> str:
    """A Redis reply as text (the client answers bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
