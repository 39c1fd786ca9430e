"""At most ``per_user`` events of one user are handled at once on a node; the rest wait, in order.

The rate limit bounds how many events a user may send; this bounds how many of them run at
the same time. Without it, a burst the limit allows (300 joins, pipelined on one connection or
spread over twenty) starts at once: thousands of store reads enter the database's queue ahead
of everyone else's, and other users' events wait behind them. With it, one user has at most
``per_user`` events' reads in flight, and their burst is answered in turn.

A slot that is given back passes straight to the user's first waiting event, so the waiting
are served in arrival order and no newcomer overtakes them. Waiting costs no task of its own:
each event already runs in one.
"""

from __future__ import annotations

import asyncio
from collections import deque


class EventSlots:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._running: dict[str, int] = {}  # user -> events holding a slot (only users with any)
        # user -> events waiting for a slot; only while all the user's slots are taken.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def take_now(self, user_id: str) -> bool:
        """Take a slot if one is free (then ``True``): the common case, with no await."""
        running = self._running.get(user_id, 0)
        if running >= self.per_user:
            return False
        self._running[user_id] = running + 1
        return True

    async def take(self, user_id: str) -> None:
        """Wait for a slot: one given back by an event of the same user."""
        if self.take_now(user_id):
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a slot as it was cancelled
                self.give_back(user_id)
            raise  # a cancelled turn stays queued, done: give_back skips it

    def give_back(self, user_id: str) -> None:
        """Free a slot, or pass it to the user's next waiting event."""
        waiting = self._waiting.get(user_id)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                if not waiting:
                    del self._waiting[user_id]
                return
        self._waiting.pop(user_id, None)
        running = self._running[user_id] - 1
        if running:
            self._running[user_id] = running
        else:
            del self._running[user_id]

    def running(self, user_id: str) -> int:
        return self._running.get(user_id, 0)
