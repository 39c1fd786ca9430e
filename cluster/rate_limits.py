"""Per-user rate limits: a token bucket for sends and one for every other event.

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

from .redis_scripts import PREFIX, RedisConnection, Script, now_ms, settle


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

    def bucket_for(self, event: str) -> tuple[str, Bucket]:
        return ("send", self.send) if event == "send_message" else ("other", self.other)


class LocalLimiter:
    """Token buckets kept in process memory, keyed by (user, kind)."""

    def __init__(self, limits: RateLimits, clock=time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._state: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, at

    async def check(self, user_id: str, event: str) -> int | None:
        """Take a token; return ``retry_after_ms`` when there is none."""
        kind, bucket = self._limits.bucket_for(event)
        if not bucket.enabled:
            return None
        now = self._clock()
        key = (user_id, kind)
        tokens, at = self._state.get(key, (float(bucket.burst), now))
        tokens = min(float(bucket.burst), tokens + (now - at) * bucket.rate)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / bucket.rate * 1000))
        self._state[key] = (tokens - 1.0, now)
        if len(self._state) > 50_000:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they behave as new ones."""
        keep = {}
        for (user, kind), (tokens, at) in self._state.items():
            bucket = self._limits.send if kind == "send" else self._limits.other
            if tokens + (now - at) * bucket.rate < bucket.burst:
                keep[(user, kind)] = (tokens, at)
        self._state = keep


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
        now = now_ms()
        for start in range(0, len(batch), SCRIPT_BATCH):
            chunk = batch[start:start + SCRIPT_BATCH]
            args = [now, *(x for _, rate, burst, _ in chunk for x in (rate, burst))]
            try:
                waits = self._redis.call(BUCKETS, [key for key, *_ in chunk], args)
            except StorageUnavailable as exc:
                for *_, answer in chunk:
                    settle(answer, exc)
                continue
            waits.add_done_callback(functools.partial(_answer_each, chunk))


def _answer_each(chunk: list[tuple[str, float, float, asyncio.Future]], done: asyncio.Future) -> None:
    """The bucket script's answers, one per check of ``chunk``."""
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    if error is not None:
        for *_, answer in chunk:
            settle(answer, error)
        return
    waits = done.result()
    for i, (*_, answer) in enumerate(chunk):
        settle(answer, waits[i])
