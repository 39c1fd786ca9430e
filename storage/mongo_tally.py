"""Per group, the seqs of its deleted messages and of its open questions, kept by revision.

An unread count is the seqs above a reader's marker minus the deleted ones and
the reader's own (seqs are contiguous), and a group's open questions are its
messages tagged ``unanswered``. Counting either in the database walks every
such message each time, so a join grew with the group's history of deletions
and questions. This process keeps both lists per group instead, sorted, as of a
revision of the group: a count is two bisections after one read of the group's
top ``rev`` (a range probe that starts from the top this process last saw).

Loading a group reads the seqs of its deleted messages and open questions once
(two index walks, bounded by how many there are). Catching up reads the
messages that took a revision since (the ``(group_id, revs)`` index), and each
one's current state decides whether its seq is in or out of each list. Changes
become visible in ``rev`` order (a writer takes ``top + 1`` only once ``top`` is
stored), so every change up to the top read is found by the walk; a state read
newer than that top is applied too, and applied again, harmlessly, by the next
catch-up. A group far behind (more changes since than the lists hold and
``CATCH_UP_MOST``) is loaded again instead. Catch-up and loading of one group
run one at a time, so states are applied in the order they were read; each is
read whole before any of it is applied, so a count that needs no newer revision
(it does not wait for them) sees the lists as they were or as they become.

Messages are never removed from the collection (deletion is a tombstone), so a
seq, once deleted, stays deleted; a question's ``unanswered`` tag may come and go.
A change that takes no revision (a server of a version before revisions, during
a rolling upgrade, deleting a message) is never walked by a catch-up, so a
group's lists are also loaded again once they are ``RELOAD_AFTER_S`` old: such
a change is counted at most that late. At most ``GROUPS_KEPT`` groups are kept,
the least recently counted dropped first; a list costs 8 bytes a seq.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from .conversation import TAG_UNANSWERED
from .mongo_counter import GroupCounter, window_filter

GROUPS_KEPT = 10_000
CATCH_UP_MOST = 1_000  # changes walked to catch up before loading the lists again is cheaper
RELOAD_AFTER_S = 600.0
DELETED = "deleted"
UNANSWERED = "unanswered"


def _states(doc: dict[str, Any]) -> dict[str, bool]:
    tags = doc.get("tags") or ()
    return {DELETED: doc.get("deleted") is True, UNANSWERED: TAG_UNANSWERED in tags}


@dataclass
class _Tally:
    rev: int = 0  # the lists hold every change up to this revision
    loaded_at: float = float("-inf")  # time.monotonic(); never loaded yet
    seqs: dict[str, array] = field(default_factory=dict)  # sorted, 8 bytes a seq
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def size(self) -> int:
        return sum(len(s) for s in self.seqs.values())

    def stale(self) -> bool:
        """Never loaded, or loaded longer ago than ``RELOAD_AFTER_S``."""
        return time.monotonic() - self.loaded_at > RELOAD_AFTER_S

    def apply(self, seq: int, states: dict[str, bool]) -> None:
        for state, present in states.items():
            seqs = self.seqs[state]
            i = bisect.bisect_left(seqs, seq)
            held = i < len(seqs) and seqs[i] == seq
            if present and not held:
                seqs.insert(i, seq)
            elif held and not present:
                del seqs[i]


class GroupTally:
    """Counts of a group's deleted messages (in a seq range) and open questions."""

    def __init__(self, revs: GroupCounter) -> None:
        self._revs = revs
        self._groups: OrderedDict[ObjectId, _Tally] = OrderedDict()

    async def deleted(self, messages: Any, gid: ObjectId, above: int, upto: int, *, top: int | None = None) -> int:
        """How many messages with ``above < seq <= upto`` are deleted. ``top``: the
        group's top ``rev`` when the caller has just read it (read here otherwise)."""
        seqs = (await self._current(messages, gid, top)).seqs[DELETED]
        return max(0, bisect.bisect_right(seqs, upto) - bisect.bisect_right(seqs, above))

    async def unanswered(self, messages: Any, gid: ObjectId, *, top: int | None = None) -> int:
        """How many questions of the group are open (``top`` as for ``deleted``)."""
        return len((await self._current(messages, gid, top)).seqs[UNANSWERED])

    async def _current(self, messages: Any, gid: ObjectId, top: int | None) -> _Tally:
        if top is None:
            top = await self._revs.top(messages, gid)
        tally = self._groups.get(gid)
        if tally is None:
            tally = self._groups[gid] = _Tally()
        self._groups.move_to_end(gid)
        while len(self._groups) > GROUPS_KEPT:
            self._groups.popitem(last=False)
        if tally.rev >= top and not tally.stale():
            return tally
        async with tally.lock:  # another count may have brought it up to date meanwhile
            if tally.stale() or top - tally.rev > max(CATCH_UP_MOST, tally.size()):
                await self._load(messages, gid, tally)
            elif tally.rev < top:
                await self._catch_up(messages, gid, tally, top)
            tally.rev = max(tally.rev, top)
        return tally

    # -- queries (public so tests can explain exactly what runs) --

    @staticmethod
    def load_filters(gid: ObjectId) -> dict[str, dict[str, Any]]:
        """What loading a group reads, per state: a walk of the deleted messages
        (``(group_id, deleted, seq)``) and of the open questions (``(group_id, tags, seq)``)."""
        return {DELETED: {"group_id": gid, "deleted": True}, UNANSWERED: {"group_id": gid, "tags": TAG_UNANSWERED}}

    @staticmethod
    def changes_filter(gid: ObjectId, above: int, upto: int, *, element_ranges: bool = True) -> dict[str, Any]:
        """What catching up reads: the messages that took a revision in ``(above, upto]``
        (``element_ranges``: as ``window_filter``'s ``elements``, so that the multikey index
        read is bounded at both ends, not read to the group's first change)."""
        return window_filter("revs", gid, above, upto, elements=element_ranges)

    async def _load(self, messages: Any, gid: ObjectId, tally: _Tally) -> None:
        started = time.monotonic()
        seqs = {}
        for state, selector in self.load_filters(gid).items():
            found = [doc["seq"] async for doc in messages.find(selector, {"_id": 0, "seq": 1})]
            seqs[state] = array("q", sorted(found))
        tally.seqs, tally.loaded_at = seqs, started

    async def _catch_up(self, messages: Any, gid: ObjectId, tally: _Tally, top: int) -> None:
        selector = self.changes_filter(gid, tally.rev, top, element_ranges=self._revs.element_ranges)
        # Read to the end before applying anything: a count that needs no newer revision
        # takes the lists without waiting for this one, and must not find them half changed.
        changed = await messages.find(selector, {"_id": 0, "seq": 1, "deleted": 1, "tags": 1}).to_list()
        for doc in changed:
            tally.apply(doc["seq"], _states(doc))
