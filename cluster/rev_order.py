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

A ``resync`` (the group's channel was lost for a while, or heard only after a
join read storage) has no later broadcast to reveal what it could not read, so
it tries again after a pause; one asked for during a gap fill runs after it,
and one asked for before the group's first join here runs from that join's
baseline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REORDER_WAIT_S = 0.25
FILL_TIMEOUT_S = 2.0
# A group with nothing waiting is set aside after this long without a message:
# the table holds the groups active lately, not every group ever seen. Of an
# idle group only its last rev is kept (the newest ``IDLE_KEPT``), so a gap or a
# resync after a quiet spell still starts from what was delivered.
IDLE_S = 300.0
IDLE_KEPT = 100_000
UNBOUNDED = 2**62  # "before" for a fill that reads up to the latest change
RESYNC_PAGES = 50  # fills one resync reads at most
RESYNC_PAUSES_S = (0.25, 1.0, 4.0)  # before each new try of a resync whose read failed

# (group, after_rev, before_rev) -> [(rev, broadcast)] for the revs strictly between.
Fill = Callable[[str, int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]


@dataclass
class _GroupOrder:
    last: int
    at: float  # loop time of the latest offer
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    filling: bool = False  # a read of storage for this group is under way
    resyncing: bool = False
    resync_after_fill: bool = False


class _Unreadable(Exception):
    """Storage could not be read for a fill or a resync (logged where it happened)."""


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
        self._resync_at_join: set[str] = set()  # resyncs asked for before the group's baseline
        self._idle: dict[str, int] = {}  # group -> last delivered rev, for groups set aside while idle

    def __len__(self) -> int:
        """How many groups' order is kept now."""
        return len(self._groups)

    def offer(self, group_id: str, rev: int, message: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._prune(now)
        state = self._groups.get(group_id)
        if state is None:
            state = self._groups[group_id] = _GroupOrder(self._idle.pop(group_id, rev - 1), now)
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
        ``before``; ``None`` when the group's order was closed or forgotten
        meanwhile; ``_Unreadable`` when storage could not be read. What arrives
        during the read waits behind it."""
        assert self.fill is not None
        state.filling = True
        after = state.last
        failed: Exception | None = None
        try:
            found = await asyncio.wait_for(self.fill(group_id, after, before), FILL_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not read the changes of %s after rev %d from storage: %s", group_id, after, exc)
            found, failed = [], exc
        finally:
            state.filling = False
        if self._groups.get(group_id) is not state:
            return None
        if failed is not None:
            raise _Unreadable() from failed
        return found

    async def _fill(self, group_id: str, state: _GroupOrder) -> None:
        # Every gap below the last waiting rev: while a node's publishes are
        # lost, its changes are missing between each of the others'.
        last_waiting = max(state.pending)
        try:
            found = await self._read(group_id, state, last_waiting)
        except _Unreadable:
            found = []  # what waits goes out over the gap: clients fill it themselves
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
        if state.resync_after_fill:
            state.resync_after_fill = False
            self._start_resync(group_id)

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
            # After a quiet spell, from what this node delivered: what it missed is filled.
            last = self._idle.pop(group_id, rev)
            self._groups[group_id] = _GroupOrder(last, asyncio.get_running_loop().time())
            if group_id in self._resync_at_join:
                self._resync_at_join.discard(group_id)
                self._start_resync(group_id)

    def forget(self, group_id: str) -> None:
        """This node stopped listening to the group: drop its order (what waits
        goes out first), so listening again later starts afresh."""
        self._resync_at_join.discard(group_id)
        self._idle.pop(group_id, None)
        state = self._groups.get(group_id)
        if state is None or state.filling:
            return
        self._skip_gap(state)
        del self._groups[group_id]

    async def resync(self, group_id: str) -> None:
        """The group's channel was lost for a while: deliver, in order, every
        change after the last delivered ``rev`` that storage holds now, read a
        page at a time (at most ``RESYNC_PAGES``; beyond, clients see a ``rev``
        jump and fill it themselves). A read that fails is tried again after
        each of ``RESYNC_PAUSES_S``."""
        if self.fill is None:
            return
        state = self._groups.get(group_id)
        if state is None and group_id in self._idle:
            last = self._idle.pop(group_id)
            state = self._groups[group_id] = _GroupOrder(last, asyncio.get_running_loop().time())
        if state is None:  # no join here has read the group yet: start from the first one's baseline
            self._resync_at_join.add(group_id)
            return
        if state.resyncing:
            return  # the resync under way reads until storage holds nothing newer
        if state.filling:
            state.resync_after_fill = True
            return
        state.resyncing = True
        try:
            await self._resync(group_id, state)
        finally:
            state.resyncing = False

    async def _resync(self, group_id: str, state: _GroupOrder) -> None:
        pauses = iter(RESYNC_PAUSES_S)
        pages = 0
        while pages < RESYNC_PAGES:
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            after = state.last
            try:
                found = await self._read(group_id, state, UNBOUNDED)
            except _Unreadable:
                pause = next(pauses, None)
                if pause is None:
                    log.error("gave up reading the changes of %s after rev %d: its members fill the gap when "
                              "the next change reaches them", group_id, after)
                    return
                # Meanwhile what arrives live goes out (a gap in it is filled on its own).
                self._deliver_through(group_id, state, state.last)
                await asyncio.sleep(pause)
                if self._groups.get(group_id) is not state:
                    return
                if state.filling:  # a gap fill started meanwhile: go on after it
                    state.resync_after_fill = True
                    return
                continue
            if found is None:
                return
            pages += 1
            read = [(rev, message) for rev, message in found if rev > state.last]
            if not read:
                break
            log.info("read %d changes of %s after rev %d from storage", len(read), group_id, after)
            for rev, message in read:
                state.pending.setdefault(rev, message)
            # Deliver what was read (and what waits below it), keep what came in live above it.
            self._deliver_through(group_id, state, read[-1][0])

    def _start_resync(self, group_id: str) -> None:
        task = asyncio.ensure_future(self.resync(group_id))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

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
        """At most once per ``idle_s``: set aside groups idle that long with nothing waiting
        (keeping their last rev)."""
        if self._pruned_at is None:
            self._pruned_at = now
        if now - self._pruned_at < self._idle_s:
            return
        self._pruned_at = now
        idle = [g for g, s in self._groups.items()
                if not s.pending and not s.filling and not s.resyncing and now - s.at >= self._idle_s]
        for group_id in idle:
            self._idle[group_id] = self._groups.pop(group_id).last
        if len(self._idle) > IDLE_KEPT:  # the longest idle go first
            self._idle = dict(itertools.islice(self._idle.items(), len(self._idle) - IDLE_KEPT, None))

    def close(self) -> None:
        """Stop the timers and fills; what waits is dropped (clients fill gaps themselves)."""
        for state in self._groups.values():
            if state.timer is not None:
                state.timer.cancel()
        for task in self._fills:
            task.cancel()
        self._groups.clear()
        self._resync_at_join.clear()
        self._idle.clear()
