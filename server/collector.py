"""What a full garbage collection walks: only what was made since the last one.

A full collection holds the event loop while it walks every object the collector tracks. On a
node with many connections most of those are the connections' own (about 18 each), alive for
hours and walked again by every full collection: about 0.5 s at 19,000 connections with
Python's defaults, and by that rate over a second at 100,000. So what survives a full
collection is frozen (``gc.freeze``) as it ends, and later collections walk only what was made
since.

A frozen object is still freed by reference counting when its last reference goes, and a
connection's objects hold no reference cycle (``tests/on_uvloop/test_connection_objects.py``),
so they go as the connection ends. Something frozen that later dies in a reference cycle is
not found until it is unfrozen, so every ``DEEP_EVERY_S`` the next full collection unfreezes
everything first and walks it all: one pause of the old length in that time, at most.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

DEEP_EVERY_S = 3600.0


class SurvivorFreezer:
    """Freezes what each full collection leaves, and lets one walk everything every
    ``deep_every_s``. One per process (``gc.callbacks`` and the frozen set are process-wide)."""

    installed: SurvivorFreezer | None = None

    def __init__(self, deep_every_s: float = DEEP_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.deep_every_s = deep_every_s
        self._clock = clock
        self._last_deep = clock()
        self.deep_collections = 0

    @classmethod
    def install(cls, deep_every_s: float = DEEP_EVERY_S, clock: Callable[[], float] = time.monotonic) -> SurvivorFreezer:
        if cls.installed is None:
            cls.installed = cls(deep_every_s, clock)
            gc.callbacks.append(cls.installed._on_collection)
        return cls.installed

    @classmethod
    def uninstall(cls) -> None:
        """Stop, and unfreeze everything (for tests: the process goes on collecting as before)."""
        if cls.installed is not None:
            gc.callbacks.remove(cls.installed._on_collection)
            cls.installed = None
            gc.unfreeze()

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            now = self._clock()
            if now - self._last_deep >= self.deep_every_s:
                # Before the collection begins: the frozen objects join the oldest
                # generation, and this collection walks them with the rest.
                gc.unfreeze()
                self._last_deep = now
                self.deep_collections += 1
        else:
            # The collection is over: the young generations are empty and what is left in
            # the oldest survived it (no garbage among it), so it is all frozen.
            gc.freeze()
