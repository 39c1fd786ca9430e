"""What the chat's events call besides the store, side by side: presence,
rate limits and metrics. Each is a structural ``Protocol``; the local and the
Redis-backed implementations live in ``cluster``, the metrics in ``server``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Presence(Protocol):
    async def join(self, group_id: str, user_id: str, sid: str) -> bool:
        """Record ``sid`` in the group; ``True`` when it is the user's first connection there."""
        ...

    async def leave(self, group_id: str, user_id: str, sid: str) -> bool:
        """Forget ``sid``; ``True`` when it was the user's last connection there."""
        ...

    async def online(self, group_id: str) -> list[str]:
        """User ids with at least one connection in the group's room."""
        ...


class Limiter(Protocol):
    """A limiter that counts in this process also has ``take``: ``check`` without a
    coroutine (``TakeNow``), which the events call instead."""

    async def check(self, user_id: str, event: str, cost: int = 1) -> int | None:
        """Take ``cost`` tokens for ``event``: ``None`` to allow, else ``retry_after_ms``."""
        ...


TakeNow = Callable[[str, str, int], "int | None"]


class Observer(Protocol):
    """Hooks for metrics."""

    def event(self, event: str, outcome: str, seconds: float) -> None: ...

    def connections(self, delta: int) -> None: ...

    def rooms(self, delta: int) -> None: ...

    def send_stored(self, seconds: float) -> None: ...

    def send_broadcast(self, seconds: float) -> None: ...

    def upload(self, outcome: str, size: int) -> None:
        """An attachment upload ended: ``ok``, ``too_large``, ``unsupported`` or ``rate_limited``."""
