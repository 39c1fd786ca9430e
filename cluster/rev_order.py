"""``RevOrder``: a small reorder buffer that delivers each group's message
broadcasts (``message``, ``message_updated``, ``message_deleted``) in ``rev``
order (see ``redis_manager``). New messages take ``seq`` and ``rev`` together,
so ``message`` events are in ``seq`` order too.

When a ``rev`` is still missing after ``wait_s`` (its node died between
storing and publishing, or the queue dropped it), the gaps are filled from
storage when a ``fill`` is given: it returns the broadcasts for the changes
between the last delivered ``rev`` and the last waiting one (the current
state of each message whose ``rev`` lies there), which go out in order with
what waits.
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
UNBOUNDED = 2**62  # "before" for a fill that reads up to the latest change
RESYNC_PAGES = 50  # fills one resync reads at most

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

    async def _read(self, group_id: str, state: _GroupOrder, before: int) -> list[tuple[int, dict[str, Any]]] | None:
        """The broadcasts of the changes storage holds between ``state.last`` and
        ``before`` (none when it cannot be read: clients fill the gap themselves);
        ``None`` when the group's order was closed or forgotten meanwhile. What
        arrives during the read waits behind it."""
        assert self.fill is not None
        state.filling = True
        after = state.last
        try:
            found = await asyncio.wait_for(self.fill(group_id, after, before), FILL_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not read the changes of %s after rev %d from storage: %s", group_id, after, exc)
            found = []
        finally:
            state.filling = False
        return found if self._groups.get(group_id) is state else None

    async def _fill(self, group_id: str, state: _GroupOrder) -> None:
        # Every gap below the last waiting rev: while a node's publishes are
        # lost, its changes are missing between each of the others'.
        last_waiting = max(state.pending)
        found = await self._read(group_id, state, last_waiting)
        if found is None:
            return
        filled = 0
        for rev, message in found:
            if state.last < rev < last_waiting and rev not in state.pending:
                state.pending[rev] = message
                filled += 1
        log.info("filled %d of the missing revs between %d and %d of %s from storage", filled, state.last,
                 last_waiting, group_id)
        # What arrived during the read, above ``last_waiting``, has gaps of its own to wait for.
        self._deliver_through(group_id, state, last_waiting)

    def _skip_gap(self, state: _GroupOrder) -> None:
        """Deliver everything waiting, in order, over whatever is still missing."""
        for rev in sorted(state.pending):
            self._deliver(state.pending.pop(rev))
            state.last = rev
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def baseline(self, group_id: str, rev: int) -> None:
        """A connection here joined the group holding every change up to ``rev``:
        when nothing was delivered for the group yet, the next one expected is
        ``rev + 1`` (so a change lost before the first delivery is a gap to fill,
        not unseen)."""
        if group_id not in self._groups:
            self._groups[group_id] = _GroupOrder(rev, asyncio.get_running_loop().time())

    def forget(self, group_id: str) -> None:
        """This node stopped listening to the group: drop its order (what waits
        goes out first), so listening again later starts afresh."""
        state = self._groups.get(group_id)
        if state is None or state.filling:
            return
        self._skip_gap(state)
        del self._groups[group_id]

    async def resync(self, group_id: str) -> None:
        """The group's channel was lost for a while: deliver, in order, every
        change after the last delivered ``rev`` that storage holds now, read a
        page at a time (at most ``RESYNC_PAGES``; beyond, clients see a ``rev``
        jump and fill it themselves)."""
        state = self._groups.get(group_id)
        if state is None or self.fill is None or state.filling:
            return
        for _ in range(RESYNC_PAGES):
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            after = state.last
            found = await self._read(group_id, state, UNBOUNDED)
            if found is None:
                return
            read = [(rev, message) for rev, message in found if rev > state.last]
            if not read:
                break
            log.info("read %d changes of %s after rev %d from storage", len(read), group_id, after)
            for rev, message in read:
                state.pending.setdefault(rev, message)
            # Deliver what was read (and what waits below it), keep what came in live above it.
            self._deliver_through(group_id, state, read[-1][0])

    def _deliver_through(self, group_id: str, state: _GroupOrder, upto: int) -> None:
        """Deliver, in order, everything waiting up to ``upto`` (over gaps), then
        what follows without a gap; what is left waits for its own gap."""
        for rev in sorted(state.pending):
            if rev > upto:
                break
            self._deliver(state.pending.pop(rev))
            state.last = rev
        self._drain(state)
        if state.pending and state.timer is None:
            state.timer = asyncio.get_running_loop().call_later(self._wait_s, self._give_up, group_id)

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
