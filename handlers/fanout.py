"""Cross-node fan-out on python-socketio's Redis manager, in ``seq`` order.

``AsyncRedisManager`` delivers an emit to this node's clients first and then
publishes it for the other nodes. Two things are added here:

- Publishes leave in the order the emits were made (one publisher task), so a
  node's own messages reach other nodes in ``seq`` order.
- Every node passes a group's ``message`` events through a small reorder
  buffer: when ``seq`` N+2 arrives before N+1 (sent by another node a moment
  earlier), it waits up to ``REORDER_WAIT_S`` for N+1. If N+1 never comes (a
  queue fault), the later messages go out anyway and clients see a ``seq``
  jump, which they fill from history. A ``seq`` at or below the last one this
  node delivered for the group is dropped, so no connection ever sees a
  group's ``seq`` go backwards.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import socketio

log = logging.getLogger(__name__)

REORDER_WAIT_S = 0.25
OUTBOX_LIMIT = 10_000


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


class ChatRedisManager(socketio.AsyncRedisManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None
        self._deliveries: set[asyncio.Task] = set()
        self._order = SeqOrder(self._deliver_now)

    def initialize(self) -> None:
        super().initialize()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_in_order())

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if kwargs.get("ignore_queue") or callback is not None or self._outbox is None:
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        message = {
            "method": "emit", "event": event, "data": [data], "binary": False,
            "namespace": namespace or "/", "room": room, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            log.error("Redis publish queue full; dropping an emit for other nodes (clients fill gaps)")
        else:
            self._outbox.put_nowait(message)
        await self._handle_emit(message)

    async def _publish_in_order(self) -> None:
        assert self._outbox is not None
        while True:
            message = await self._outbox.get()
            try:
                await self._publish(message)
            except Exception:  # _publish logs and gives up by itself; never stop the loop
                log.exception("publishing to Redis failed")

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        payload = data[0] if isinstance(data, list) and len(data) == 1 else None
        if (
            message.get("event") == "message"
            and isinstance(payload, dict)
            and isinstance(payload.get("seq"), int)
            and isinstance(message.get("room"), str)
        ):
            self._order.offer(message["room"], payload["seq"], message)
            return
        await super()._handle_emit(message)

    def _deliver_now(self, message: dict[str, Any]) -> None:
        # Tasks start in creation order and each queues its packets at its
        # first step, so calling order is delivery order.
        task = asyncio.ensure_future(super()._handle_emit(message))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def close(self) -> None:
        if self._publisher is not None:
            # Let what is queued go out, briefly.
            for _ in range(20):
                if self._outbox is None or self._outbox.empty():
                    break
                await asyncio.sleep(0.05)
            self._publisher.cancel()
        if getattr(self, "thread", None) is not None:
            self.thread.cancel()
