"""``GroupCounter``: the top of a per-group number that is contiguous in MongoDB.

``seq`` and ``rev`` are numbered the same way: a writer takes ``top + 1`` and a
unique ``(group_id, <field>)`` index arbitrates between writers. Every number
from 1 to the top is stored somewhere in the group (a number, once taken, is
never freed), so whether ``n`` is taken is a point lookup, and the top is
found from a per-process lower bound (the highest number seen stored) with one
bounded range probe, galloping with point probes when far behind. Each probe
is an index walk of at most ``PROBE`` keys whatever the group's size, which
also holds on servers that cannot stop an index walk at a ``limit``.

``multikey`` counters keep every number a document ever took in an array
(``revs``): a range probe then returns documents holding any number in the
range, and the highest number inside the range is picked here (a multikey
sort orders by the array's largest element, which may lie outside the range).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.asynchronous.cursor import AsyncCursor

PROBE = 64  # numbers a single range probe may walk
HINTS_KEPT = 10_000


def window_filter(field: str, gid: ObjectId, above: int, upto: int, *, elements: bool) -> dict[str, Any]:
    """The group's documents holding a number in ``(above, upto]`` in ``field``. ``elements``:
    as one array element's range (``$elemMatch``), which MongoDB bounds at both ends in a
    multikey index (a bare range on an array may be read from one bound only)."""
    window: dict[str, Any] = {"$gt": above, "$lte": upto}
    return {"group_id": gid, field: {"$elemMatch": window} if elements else window}


class GroupCounter:
    """Finds and remembers the top of one per-group counter field."""

    def __init__(self, field: str, *, multikey: bool = False) -> None:
        self.field = field
        self.multikey = multikey
        # Whether the server bounds an index read by one array element's range
        # (``$elemMatch``): MongoDB may read a bare range on a multikey field from one
        # bound only (to the group's first number); SecantusDB reads the bare range
        # through the index but scans with ``$elemMatch``.
        self.element_ranges = True
        # Per group, a number known to be stored: where the search for the top starts.
        self._hints: OrderedDict[ObjectId, int] = OrderedDict()

    def window_cursor(self, collection: Any, gid: ObjectId, above: int, upto: int) -> AsyncCursor[dict[str, Any]]:
        """What the range probe reads: documents holding a number in ``(above, upto]``."""
        selector = window_filter(self.field, gid, above, upto, elements=self.multikey and self.element_ranges)
        cursor = collection.find(selector, {"_id": 0, self.field: 1})
        return cursor if self.multikey else cursor.sort(self.field, DESCENDING).limit(1)

    def point_cursor(self, collection: Any, gid: ObjectId, value: int) -> AsyncCursor[dict[str, Any]]:
        """Whether ``value`` is taken in the group: a point lookup in the index."""
        return collection.find({"group_id": gid, self.field: value}, {"_id": 1}).limit(1)

    def known(self, gid: ObjectId) -> int | None:
        """The highest number this process has seen stored in the group, if any:
        ``known + 1`` is a safe first try for a writer (the unique index turns it
        down if another process took it meanwhile), with no read before it."""
        return self._hints.get(gid)

    def remember(self, gid: ObjectId, value: int) -> None:
        """``value`` was seen stored: no later search starts below it."""
        if value <= 0:
            return
        self._hints[gid] = max(value, self._hints.get(gid, 0))
        self._hints.move_to_end(gid)
        while len(self._hints) > HINTS_KEPT:
            self._hints.popitem(last=False)

    async def top(self, collection: Any, gid: ObjectId) -> int:
        """The group's highest taken number (0 when none), walking O(PROBE + log n) keys.

        Every answer is a number seen stored (or 0), which is what makes
        ``top + 1`` a safe number to try: it never leaves a hole.
        """
        start = low = self._hints.get(gid, 0)
        found = await self._highest_in(collection, gid, low, low + PROBE)
        if found is not None:
            low = found
            if low == start + PROBE:
                # Far behind (cold start, or other processes wrote a lot): gallop
                # with point probes, bisect, then finish with one range probe.
                step, high = PROBE, low + PROBE
                while await self._taken(collection, gid, high):
                    low, step = high, step * 2
                    high = low + step
                while high - low > PROBE:
                    mid = (low + high) // 2
                    if await self._taken(collection, gid, mid):
                        low = mid
                    else:
                        high = mid
                found = await self._highest_in(collection, gid, low, high)
                if found is not None:
                    low = found
        self.remember(gid, low)
        return low

    async def _highest_in(self, collection: Any, gid: ObjectId, above: int, upto: int) -> int | None:
        best: int | None = None
        async for doc in self.window_cursor(collection, gid, above, upto):
            value = doc.get(self.field)
            for number in value if isinstance(value, list) else (value,):
                if isinstance(number, int) and above < number <= upto and (best is None or number > best):
                    best = number
        return best

    async def _taken(self, collection: Any, gid: ObjectId, value: int) -> bool:
        return bool(await self.point_cursor(collection, gid, value).to_list(None))
