"""``KeyedLock``: one ``asyncio.Lock`` per key (a group, say), kept only while
someone holds or waits for it, so the table never outgrows the work in flight."""

from __future__ import annotations

import asyncio


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting


class _Held:
    """``async with`` this: holds the key's lock for the block."""

    __slots__ = ("_table", "_key", "_entry")

    def __init__(self, table: dict[str, _Entry], key: str) -> None:
        self._table, self._key = table, key
        self._entry: _Entry | None = None

    async def __aenter__(self) -> None:
        entry = self._entry = self._table.get(self._key) or self._table.setdefault(self._key, _Entry())
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._forget(entry)
            raise

    async def __aexit__(self, *exc: object) -> None:
        entry = self._entry
        assert entry is not None
        entry.lock.release()
        self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._table[self._key]


class KeyedLock:
    """``async with locks(key):`` runs one block per key at a time, in arrival order."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[str, _Entry] = {}

    def __call__(self, key: str) -> _Held:
        return _Held(self._table, key)

    def held(self, key: str) -> bool:
        """Whether someone holds or waits for ``key``."""
        return key in self._table

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._table)
