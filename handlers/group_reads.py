"""Membership checks of one group that overlap become one store read.

Every event about a group checks, in the store, that its sender is a member now
(a member removed by the platform is refused at once, whatever this node has
heard). Under load that is a read per event. Here a check that finds no read of
its group in flight reads at once, alone; checks that arrive while one is in
flight wait for it to end and are then answered together by one read
(``Store.get_group_for``). So a check is never answered by a read that started
before it was asked, and an idle group's check waits for nothing.
"""

from __future__ import annotations

import asyncio

from storage.base import GroupAccess, Store

from .fresh_reads import own_exception

Answer = asyncio.Future[GroupAccess | None]


class GroupReads:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._reading: set[str] = set()  # groups with a read in flight
        self._waiting: dict[str, dict[str, list[Answer]]] = {}  # group -> user -> checks for the next read
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, group_id: str, user_id: str) -> GroupAccess | None:
        """The group as ``user_id`` sees it, read after this call began (``None``: no such group)."""
        if group_id not in self._reading:
            self._reading.add(group_id)
            try:
                return await self._store.get_group(group_id, user_id)
            finally:
                self._next(group_id)
        answer: Answer = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(group_id, {}).setdefault(user_id, []).append(answer)
        return await answer

    def _next(self, group_id: str) -> None:
        """A read of ``group_id`` ended: start one for the checks that waited, if any."""
        waiting = self._waiting.pop(group_id, None)
        if not waiting:
            self._reading.discard(group_id)
            return
        task = asyncio.create_task(self._read_for(group_id, waiting), name=f"membership of {group_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_for(self, group_id: str, waiting: dict[str, list[Answer]]) -> None:
        try:
            found = await self._store.get_group_for(group_id, list(waiting))
        except Exception as exc:
            for answers in waiting.values():
                for answer in answers:
                    if not answer.done():
                        answer.set_exception(own_exception(exc))
        except BaseException:  # stopped (shutdown): so are the checks it carried
            for answers in waiting.values():
                for answer in answers:
                    answer.cancel()
            raise
        else:
            for user_id, answers in waiting.items():
                for answer in answers:
                    if not answer.done():
                        answer.set_result(None if found is None else found[user_id])
        finally:
            self._next(group_id)
