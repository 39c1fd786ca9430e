"""``RevOrder``: a small reorder buffer that delivers each group's message
broadcasts (``message``, ``message_updated``, ``message_deleted``) in ``rev``
order (see ``redis_manager``). New messages take ``seq`` and ``rev`` together,
so ``message`` events are in ``seq`` order too.

When a ``rev`` is still missing after ``wait_s`` (its node died between
storing and publishing, or the queue dropped it), the gap is filled from
storage when a ``fill`` is given: it returns the broadcasts for the changes
between the last delivered ``rev`` and the first waiting one (the current
state of each message whose ``rev`` lies there), which go out first, in order.
What still cannot be filled is skipped: the waiting broadcasts go out and
clients see a ``rev`` jump, which they fill with ``get_changes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REORDER_WAIT_S = 0.25
FILL_TIMEOUT_S = 2.0
# A group with nothing waiting is forgotten after this long without a message:
# the table holds the groups active lately, not every group ever seen.
IDLE_S = 300.0

# (group, after_rev, before_rev) -> [(rev, broadcast)] for the revs strictly between.
Fill = Callable[[str, int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]


@dataclass
class _GroupOrder:
    last: int
    at: float  # loop time of the latest offer
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    filling: bool = False


class RevOrder:
    """Decides when each group's message broadcasts may be delivered."""

    def __init__(self, deliver: Callable[[dict[str, Any]], None], wait_s: float = REORDER_WAIT_S,
                 idle_s: float = IDLE_S, fill: Fill | None = None) -> None:
        self._deliver = deliver  # called synchronously, in delivery order
        self._wait_s = wait_s
        self._idle_s = idle_s
        self.fill = fill
        self._groups: dict[str, _GroupOrder] = {}
        self._pruned_at: float | None = None
        self._fills: set[asyncio.Task[None]] = set()

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
        if rev != state.last + 1 or state.filling:
            state.pending[rev] = message
            if state.timer is None and not state.filling:
                state.timer = loop.call_later(self._wait_s, self._give_up, group_id)
            return
        self._deliver(message)
        state.last = rev
        self._drain(state)

    def _drain(self, state: _GroupOrder) -> None:
        """Deliver what waits right above ``last``; stop the timer when nothing waits."""
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
        if self.fill is None or not state.pending:
            self._skip_gap(state)
            return
        state.filling = True
        task = asyncio.ensure_future(self._fill(group_id, state))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, group_id: str, state: _GroupOrder) -> None:
        assert self.fill is not None
        first_waiting = min(state.pending)
        try:
            found = await asyncio.wait_for(self.fill(group_id, state.last, first_waiting), FILL_TIMEOUT_S)
        except Exception as exc:  # storage down: clients fill the gap themselves
            log.warning("could not fill revs %d..%d of %s from storage: %s",
                        state.last + 1, first_waiting - 1, group_id, exc)
            found = []
        finally:
            state.filling = False
        if self._groups.get(group_id) is not state:
            return  # closed meanwhile
        for rev, message in found:
            if state.last < rev < first_waiting:
                state.pending.setdefault(rev, message)
        log.info("filled %d of the revs %d..%d of %s from storage", len(found), state.last + 1,
                 first_waiting - 1, group_id)
        self._skip_gap(state)

    def _skip_gap(self, state: _GroupOrder) -> None:
        """Deliver everything waiting, in order, over whatever is still missing."""
        for rev in sorted(state.pending):
            self._deliver(state.pending.pop(rev))
            state.last = rev
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _prune(self, now: float) -> None:
        """At most once per ``idle_s``: forget groups idle that long with nothing waiting."""
        if self._pruned_at is None:
            self._pruned_at = now
        if now - self._pruned_at < self._idle_s:
            return
        self._pruned_at = now
        idle = [g for g, s in self._groups.items()
                if not s.pending and not s.filling and now - s.at >= self._idle_s]
        for group_id in idle:
            del self._groups[group_id]

    def close(self) -> None:
        """Stop the timers and fills; what waits is dropped (clients fill gaps themselves)."""
        for state in self._groups.values():
            if state.timer is not None:
                state.timer.cancel()
        for task in self._fills:
            task.cancel()
        self._groups.clear()
