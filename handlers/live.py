"""Presence and typing: who is in a group's room right now, and who is typing.

Presence sits behind a small interface; ``LocalPresence`` serves one process.
A multi-node implementation keeps the same methods.
"""

from __future__ import annotations

import time
from typing import Protocol

# Typing: at most one ``is_typing: true`` per user and group is forwarded per
# TYPING_THROTTLE_S; receivers show a user as stopped TYPING_EXPIRY_S after
# their last ``true`` (documented in docs/protocol.md for client authors).
TYPING_THROTTLE_S = 2.0
TYPING_EXPIRY_S = 6.0


class Presence(Protocol):
    async def join(self, group_id: str, user_id: str, sid: str) -> bool:
        """Record ``sid`` in the group; ``True`` when it is the user's first connection there."""

    async def leave(self, group_id: str, user_id: str, sid: str) -> bool:
        """Forget ``sid``; ``True`` when it was the user's last connection there."""

    async def online(self, group_id: str) -> list[str]:
        """User ids with at least one connection in the group's room."""


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
