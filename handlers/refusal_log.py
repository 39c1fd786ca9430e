"""Refusals a client can repeat at will, logged once per interval with a count.

A user flooding one event used to write one WARNING line per refusal (255,000
lines, 39 MB, in 8 s): logs must not be an amplifier. The first refusal of a
``(user, code)`` pair is logged at once; the ones after it within ``interval_s``
are counted, and the next line (or a flush of the pair once its interval has
passed) carries their number. Exact counts stay in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_S = 10.0


@dataclass
class _Seen:
    logged_at: float
    latest: str  # the latest refusal's event and details, for the summary line
    more: int = 0  # refusals since the line at ``logged_at``


class RefusalLog:
    """Logs refusals on ``logger`` at WARNING, one line per ``(user, code)`` per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str | None, str], _Seen] = {}
        self._flushed_at = clock()

    def refused(self, user_id: str | None, code: str, event: str, **context: object) -> None:
        """Record one refusal of ``event`` for ``user_id``; log it unless its pair was logged lately."""
        now = self._clock()
        latest = " ".join([event, *(f"{key}={value}" for key, value in context.items())])
        key = (user_id, code)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, latest)
            self._log.warning("refused %s user=%s code=%s", latest, user_id, code)
        elif now - seen.logged_at >= self._interval_s:
            self._log.warning("refused %s user=%s code=%s (and %d more since the last line)",
                              latest, user_id, code, seen.more)
            seen.logged_at, seen.latest, seen.more = now, latest, 0
        else:
            seen.more += 1
            seen.latest = latest
        if now - self._flushed_at >= self._interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the counts of pairs whose interval has passed, and forget those pairs."""
        now = self._clock() if now is None else now
        self._flushed_at = now
        for key, seen in list(self._seen.items()):
            if now - seen.logged_at < self._interval_s:
                continue
            del self._seen[key]
            if seen.more:
                self._log.warning("refused %d more times in %.0f s, the latest: %s user=%s code=%s",
                                  seen.more, now - seen.logged_at, seen.latest, key[0], key[1])
