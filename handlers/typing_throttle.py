"""Typing indicators: who is typing in a group, forwarded at a bounded rate."""

from __future__ import annotations

import time

# Typing: at most one ``is_typing: true`` per user and group is forwarded per
# TYPING_THROTTLE_S; receivers show a user as stopped TYPING_EXPIRY_S after
# their last ``true`` (documented in docs/protocol.md for client authors).
TYPING_THROTTLE_S = 2.0
TYPING_EXPIRY_S = 6.0


class TypingThrottle:
    """Lets one ``typing: true`` per (user, group) through every ``interval`` seconds."""

    def __init__(self, interval: float = TYPING_THROTTLE_S, clock=time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, user_id: str, group_id: str, is_typing: bool) -> bool:
        key = (user_id, group_id)
        if not is_typing:
            # A stop always goes through, and the next start is not held back.
            self._last.pop(key, None)
            return True
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) > 10_000:
            self._prune(now)
        self._last[key] = now
        return True

    def _prune(self, now: float) -> None:
        self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
