"""Reads of one key that overlap become one, and none is answered by a read older than itself.

A read that finds none of its key in flight runs at once, alone. Reads that
arrive while one is in flight wait for it to end and are then answered together
by one new read, which began after each of them was asked: a caller sees
everything done before it asked (a ``mark_read`` just acked, say), and however
many callers ask at once, at most two reads of a key exist at any moment (one
running, one waiting to start).

``GroupReads`` does the same for membership checks, batching the users of one
group into one read; this is the plain form, one key to one answer.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def own_exception(exc: Exception) -> Exception:
    """A copy of ``exc`` for one of the callers a shared read failed, caused by ``exc``.

    One exception object raised in many coroutines gathers the traceback of every
    one of them (a log of the last would print all), and holds all their frames. An
    exception that cannot be copied is shared as it is."""
    try:
        own = copy.copy(exc)
    except Exception:
        return exc
    own.__cause__ = exc
    return own


class FreshReads(Generic[K, V]):
    def __init__(self, read: Callable[[K], Awaitable[V]], name: str) -> None:
        self._read = read
        self._name = name
        self._reading: set[K] = set()  # keys with a read in flight
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}  # key -> callers for the next read
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        """``read(key)``, from a read that began after this call did."""
        if key not in self._reading:
            self._reading.add(key)
            try:
                return await self._read(key)
            finally:
                self._next(key)
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        return await answer

    def _next(self, key: K) -> None:
        """A read of ``key`` ended: start one for the callers that waited, if any."""
        waiting = self._waiting.pop(key, None)
        if not waiting:
            self._reading.discard(key)
            return
        task = asyncio.create_task(self._read_for(key, waiting), name=f"{self._name} for {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_for(self, key: K, waiting: list[asyncio.Future[V]]) -> None:
        try:
            if all(answer.done() for answer in waiting):  # every caller gave up meanwhile
                return
            value = await self._read(key)
        except Exception as exc:
            for answer in waiting:
                if not answer.done():
                    answer.set_exception(own_exception(exc))
        except BaseException:  # stopped (shutdown): so are the callers it carried
            for answer in waiting:
                answer.cancel()
            raise
        else:
            for answer in waiting:
                if not answer.done():
                    answer.set_result(value)
        finally:
            self._next(key)
