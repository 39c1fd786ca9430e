"""``python -m tests.support.seeded_server``: ``python -m server`` with the test users and groups.

The environment is read exactly as ``python -m server`` reads it (production mode, every
setting honoured); the embedded store is seeded with ``tests.support.chat``'s users and
groups when it opens, so tokens made with known keys name real members.
``TEST_STORE_READ_DELAY_S`` makes every read-marker lookup that slow, as a loaded database
would be: it holds ``join_group`` between entering the room and answering.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from storage.memory import MemoryStore

from .chat import GROUPS, USERS

READ_DELAY_ENV = "TEST_STORE_READ_DELAY_S"


def seed_embedded_store(read_delay_s: float) -> None:
    """Seed every embedded store on ``open`` and, with a delay, slow down its ``read_state``."""
    original_open = MemoryStore.open
    original_read_state = MemoryStore.read_state

    async def open_seeded(self: MemoryStore) -> None:
        for user_id, full_name, last_name in USERS:
            self.add_user(user_id, full_name, last_name)
        for group_id, name, members in GROUPS:
            self.add_group(group_id, name, members)
        await original_open(self)

    async def slow_read_state(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(read_delay_s)
        return await original_read_state(self, *args, **kwargs)

    MemoryStore.open = open_seeded  # type: ignore[method-assign]
    if read_delay_s > 0:
        MemoryStore.read_state = slow_read_state  # type: ignore[method-assign]


def run() -> int:
    seed_embedded_store(float(os.environ.get(READ_DELAY_ENV) or 0))
    from server.cli import main

    return main([])


if __name__ == "__main__":
    sys.exit(run())
