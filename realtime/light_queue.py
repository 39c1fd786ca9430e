"""``LightQueue``: an unbounded queue that holds nothing while it is idle."""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class LightQueue:
    """The part of ``asyncio.Queue`` Engine.IO uses (unbounded), for one
    connection's outgoing packets: items and waiting getters live in deques
    created on first use and dropped when empty, so an idle connection holds
    none."""

    __slots__ = ("_finished", "_getters", "_items", "_unfinished")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._getters: collections.deque[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._finished: asyncio.Event | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._unfinished += 1
        if self._finished is not None:
            self._finished.clear()
        self._wake_one()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = collections.deque()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._getters is not None:
                    try:
                        self._getters.remove(waiter)
                    except ValueError:
                        pass
                if self._items and not waiter.cancelled():
                    self._wake_one()  # pass the item on to the next getter
                raise
        return self.get_nowait()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not getters:
            self._getters = None

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            self._finished.set()

    async def join(self) -> None:
        if self._unfinished > 0:
            if self._finished is None:
                self._finished = asyncio.Event()
            await self._finished.wait()
