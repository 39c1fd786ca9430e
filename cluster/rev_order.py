"""``RevOrder``: a small reorder buffer that delivers each group's message
broadcasts (``message``, ``message_updated``, ``message_deleted``) in ``rev``
order (see ``redis_manager``). New messages take ``seq`` and ``rev`` together,
so ``message`` events are in ``seq`` order too."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REORDER_WAIT_S = 0.25
# A group with nothing waiting is forgotten after this long without a message:
# the table holds the groups active lately, not every group ever seen.
IDLE_S = 300.0


@dataclass
class _GroupOrder:
    last: int
    at: float  # loop time of the latest offer
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class RevOrder:
    """Decides when each group's message broadcasts may be delivered."""

    def __init__(self, deliver: Callable[[dict[str, Any]], None], wait_s: float = REORDER_WAIT_S,
                 idle_s: float = IDLE_S) -> None:
        self._deliver = deliver  # called synchronously, in delivery order
        self._wait_s = wait_s
        self._idle_s = idle_s
        self._groups: dict[str, _GroupOrder] = {}
        self._pruned_at: float | None = None

    def __len__(self) -> int:
        """How many groups' order is kept now."""
        return len(self._groups)

    def offer(self, group_id: str, rev: int, message: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._prune(now)
        state = self._groups.get(group_id)
        if state is None:
            state = self._groups[group_id] = _GroupOrder(rev - 1, now)
        state.at = now
        if rev <= state.last or rev in state.pending:
            log.debug("dropping late or repeated rev %s of %s (last %s)", rev, group_id, state.last)
            return
        if rev != state.last + 1:
            state.pending[rev] = message
            if state.timer is None:
                state.timer = loop.call_later(self._wait_s, self._give_up, group_id)
            return
        self._deliver(message)
        state.last = rev
        while state.last + 1 in state.pending:
            state.last += 1
            self._deliver(state.pending.pop(state.last))
        if not state.pending and state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _give_up(self, group_id: str) -> None:
        state = self._groups.get(group_id)
        if state is None:
            return
        state.timer = None
        for rev in sorted(state.pending):
            self._deliver(state.pending.pop(rev))
            state.last = rev

    def _prune(self, now: float) -> None:
        """At most once per ``idle_s``: forget groups idle that long with nothing waiting."""
        if self._pruned_at is None:
            self._pruned_at = now
        if now - self._pruned_at < self._idle_s:
            return
        self._pruned_at = now
        idle = [g for g, s in self._groups.items() if not s.pending and now - s.at >= self._idle_s]
        for group_id in idle:
            del self._groups[group_id]

    def close(self) -> None:
        """Stop the timers; what waits is dropped (clients fill gaps from history)."""
        for state in self._groups.values():
            if state.timer is not None:
                state.timer.cancel()
        self._groups.clear()
