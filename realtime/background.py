"""Background tasks that stay referenced until they end."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

_background: set[asyncio.Task] = set()


def in_background(coro) -> asyncio.Task:
    """Run ``coro`` as a task that stays referenced until it ends; an error it
    ends with is logged."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
