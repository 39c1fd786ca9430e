"""Per-user rate limits: a token bucket for sends, one for every other event, and
two for uploads (files, and their bytes: a check may take many tokens at once).

Checked before any other work (even before the payload is parsed), so a flood
of any kind costs the server little. ``LocalLimiter`` counts in this process;
``RedisLimiter`` shares the buckets between nodes through Redis and falls back
to a ``LocalLimiter`` while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from storage.base import StorageUnavailable

from .redis_scripts import PREFIX, RedisConnection, Script, by_slot, now_ms, settle


@dataclass(frozen=True)
class Bucket:
    """``rate`` tokens per second refill a bucket of ``burst``; ``rate == 0`` turns it off."""

    rate: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0


@dataclass(frozen=True)
class RateLimits:
    # Generous for people and scripted clients, bounded for floods.
    send: Bucket = Bucket(20.0, 200)
    other: Bucket = Bucket(50.0, 300)
    upload: Bucket = Bucket(0.5, 30)  # files: 30 at once, then one per 2 s
    upload_bytes: Bucket = Bucket(1024 * 1024, 200 * 1024 * 1024)  # 200 MiB at once, then 1 MiB/s

    def bucket_for(self, event: str) -> tuple[str, Bucket]:
        if event == "send_message":
            return "send", self.send
        if event in ("upload", "upload_bytes"):
            return event, self.upload if event == "upload" else self.upload_bytes
        return "other", self.other


class LocalLimiter:
    """Token buckets kept in process memory, keyed by (user, kind)."""

    def __init__(self, limits: RateLimits, clock=time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._state: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, at

    async def check(self, user_id: str, event: str, cost: int = 1) -> int | None:
        return self.take(user_id, event, cost)

    def take(self, user_id: str, event: str, cost: int = 1) -> int | None:
        """Take ``cost`` tokens (at most the bucket's size); return ``retry_after_ms``
        when there are not that many. ``check`` without a coroutine: this limiter never waits."""
        kind, bucket = self._limits.bucket_for(event)
        if not bucket.enabled:
            return None
        cost = min(cost, bucket.burst)
        now = self._clock()
        key = (user_id, kind)
        tokens, at = self._state.get(key, (float(bucket.burst), now))
        tokens = min(float(bucket.burst), tokens + (now - at) * bucket.rate)
        if tokens < cost:
            self._state[key] = (tokens, now)
            return max(1, math.ceil((cost - tokens) / bucket.rate * 1000))
        self._state[key] = (tokens - cost, now)
        if len(self._state) > 50_000:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they behave as new ones."""
        keep = {}
        for (user, kind), (tokens, at) in self._state.items():
            _, bucket = self._limits.bucket_for("send_message" if kind == "send" else kind)
            if tokens + (now - at) * bucket.rate < bucket.burst:
                keep[(user, kind)] = (tokens, at)
        self._state = keep


# Token buckets, one check per key, in order. KEYS: bucket keys. ARGV: now ms,
# then rate per s, burst and cost for each key. Returns, per key, 0 when the
# tokens were taken, else the milliseconds until there are enough.
_BUCKETS = """
local now = tonumber(ARGV[1])
local waits = {}
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil then tokens, at = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  local wait = 0
  if tokens < cost then
    wait = math.ceil((cost - tokens) * 1000 / rate)
  else
    tokens = tokens - cost
  end
  redis.call('HSET', key, 't', tokens, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  waits[i] = wait
end
return waits
"""

BUCKETS = Script(_BUCKETS)
SCRIPT_BATCH = 500  # checks folded into one script call

class RedisLimiter:
    """Token buckets shared by all nodes; falls back to ``fallback`` without Redis.

    The checks made in one event-loop iteration go to Redis together, as one
    call of the bucket script (up to ``SCRIPT_BATCH`` checks per call); each
    still takes its own token, in order."""

    def __init__(self, connection: RedisConnection, limits, fallback) -> None:
        self._redis = connection
        self._limits = limits
        self._fallback = fallback
        self._batch: list[tuple[str, float, float, int, asyncio.Future]] = []

    async def check(self, user_id: str, event: str, cost: int = 1) -> int | None:
        kind, bucket = self._limits.bucket_for(event)
        if not bucket.enabled:
            return None
        cost = min(cost, bucket.burst)
        if self._redis.client is None:
            return await self._fallback.check(user_id, event, cost)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send_batch)
        self._batch.append((f"{PREFIX}rate:{{u:{user_id}}}:{kind}", bucket.rate, bucket.burst, cost, answer))
        try:
            wait = await answer
        except (RedisError, OSError, StorageUnavailable):
            return await self._fallback.check(user_id, event, cost)
        return int(wait) or None

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        now = now_ms()
        for chunk in _chunks(batch, self._redis.cluster):
            args = [now, *(x for _, rate, burst, cost, _ in chunk for x in (rate, burst, cost))]
            try:
                waits = self._redis.call(BUCKETS, [key for key, *_ in chunk], args)
            except StorageUnavailable as exc:
                for *_, answer in chunk:
                    settle(answer, exc)
                continue
            waits.add_done_callback(functools.partial(_answer_each, chunk))


def _chunks(batch: list, cluster: bool) -> list[list]:
    """The batch in script calls of at most ``SCRIPT_BATCH`` checks; on a Redis
    Cluster, each call's keys in one hash slot (a user's buckets share theirs)."""
    groups = by_slot(batch, lambda check: check[0].encode()) if cluster else [batch]
    return [group[start:start + SCRIPT_BATCH] for group in groups for start in range(0, len(group), SCRIPT_BATCH)]


def _answer_each(chunk: list[tuple[str, float, float, int, asyncio.Future]], done: asyncio.Future) -> None:
    """The bucket script's answers, one per check of ``chunk``."""
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    if error is not None:
        for *_, answer in chunk:
            settle(answer, error)
        return
    waits = done.result()
    for i, (*_, answer) in enumerate(chunk):
        settle(answer, waits[i])
