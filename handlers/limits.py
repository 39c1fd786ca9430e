"""Per-user rate limits: a token bucket for sends and one for every other event.

Checked before any other work (even before the payload is parsed), so a flood
of any kind costs the server little. ``LocalLimiter`` counts in this process;
a shared implementation keeps the same ``check`` method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


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
