"""Background tasks that stay referenced until they end."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import types
from collections.abc import Coroutine, Generator
from typing import Any

log = logging.getLogger(__name__)

_background: set[asyncio.Task] = set()


def in_background(coro, context: contextvars.Context | None = None) -> asyncio.Task:
    """Run ``coro`` as a task (in ``context``, or a copy of the current one) that stays
    referenced until it ends; an error it ends with is logged."""
    task = asyncio.get_running_loop().create_task(coro, context=context)
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run ``coro`` at once, up to its first wait, in a context of its own; only if it
    waits does the rest run as a background task (``in_background``). ``None`` when it
    ended without waiting: no task was made, and no turn of the loop passed.

    What Python 3.12's eager tasks do, for 3.11. Code run this way must not need
    ``asyncio.current_task()`` before its first wait (there is none then).
    """
    context = contextvars.copy_context()
    try:
        waited = context.run(coro.send, None)
    except StopIteration:
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # as a task's: logged, not raised into the caller
        log.error("background task failed", exc_info=exc)
        return None
    return in_background(_rest(coro, waited), context)


async def _rest(coro: Coroutine[Any, Any, Any], waited: Any) -> Any:
    return await _resumed(coro, waited)


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, Any], waited: Any) -> Generator[Any, None, Any]:
    """The rest of a started ``coro`` for a task to drive: first what it waits for (a future
    the task waits on, or ``None`` for a bare yield) is handed up, then ``coro`` is resumed
    and delegated to. What the task throws in meanwhile (a cancellation) goes to ``coro``."""
    while True:
        try:
            yield waited
        except BaseException as exc:
            try:
                waited = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        return (yield from coro)
