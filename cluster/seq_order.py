"""``SeqOrder``: a small reorder buffer that delivers each group's ``message``
emits in ``seq`` order (see ``redis_manager``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REORDER_WAIT_S = 0.25


@dataclass
class _GroupOrder:
    last: int | None = None
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class SeqOrder:
    """Decides when each group's ``message`` emits may be delivered."""

    def __init__(self, deliver, wait_s: float = REORDER_WAIT_S) -> None:
        self._deliver = deliver  # called synchronously, in delivery order
        self._wait_s = wait_s
        self._groups: dict[str, _GroupOrder] = {}

    def offer(self, group_id: str, seq: int, message: dict[str, Any]) -> None:
        state = self._groups.setdefault(group_id, _GroupOrder())
        if state.last is None:
            state.last = seq - 1
        if seq <= state.last or seq in state.pending:
            log.debug("dropping late or repeated seq %s of %s (last %s)", seq, group_id, state.last)
            return
        if seq != state.last + 1:
            state.pending[seq] = message
            if state.timer is None:
                state.timer = asyncio.get_running_loop().call_later(self._wait_s, self._give_up, group_id)
            return
        self._deliver(message)
        state.last = seq
        while state.last + 1 in state.pending:
            state.last += 1
            self._deliver(state.pending.pop(state.last))
        if not state.pending and state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _give_up(self, group_id: str) -> None:
        state = self._groups[group_id]
        state.timer = None
        for seq in sorted(state.pending):
            self._deliver(state.pending.pop(seq))
            state.last = seq
