"""The embedded store's search: per group, a posting list of ``seq`` for every
word and the sorted vocabulary (for the prefix), kept as messages change."""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Sequence

from sortedcontainers import SortedList

from .search_words import Query, prefix_upper_bound


class WordIndex:
    """One group's words."""

    def __init__(self) -> None:
        # A word's seqs, split by how many live messages have it. Most words are in one
        # message only (a number, a name): ``_once`` maps them to that seq, and a dict of
        # strings to ints is one the garbage collector stops tracking, so however big it
        # grows a full collection does not walk it. The others map to arrays (sorted) in
        # ``_many``, whose items are not objects for the collector to visit.
        self._once: dict[str, int] = {}
        self._many: dict[str, array[int]] = {}
        # Every word of ``_once`` and ``_many``, sorted. Not a list: most messages bring a
        # word never seen before, and inserting into a long list moves all above it.
        self._vocabulary = SortedList()
        self._words_of: dict[int, tuple[str, ...]] = {}  # tuples of strings: not walked either

    def update(self, seq: int, words: list[str]) -> None:
        """Message ``seq`` now has ``words`` (distinct; ``[]``: deleted, or none)."""
        old = self._words_of.pop(seq, ())
        if words:
            self._words_of[seq] = tuple(words)
        if old:  # an edit or a deletion: only the words that changed move
            before = frozenset(old)
            for word in before.difference(words):
                self._remove(seq, word)
            words = [word for word in words if word not in before]
        self._add(seq, words)

    def _add(self, seq: int, words: list[str]) -> None:
        once, many = self._once, self._many
        for word in words:
            seqs = many.get(word)
            if seqs is not None:
                if seqs[-1] < seq:
                    seqs.append(seq)
                else:
                    bisect.insort(seqs, seq)
                continue
            other = once.pop(word, None)
            if other is None:
                once[word] = seq
                self._vocabulary.add(word)
            else:
                many[word] = array("q", (other, seq) if other < seq else (seq, other))

    def _remove(self, seq: int, word: str) -> None:
        seqs = self._many.get(word)
        if seqs is None:
            del self._once[word]
            self._vocabulary.remove(word)
            return
        del seqs[bisect.bisect_left(seqs, seq)]
        if len(seqs) == 1:
            del self._many[word]
            self._once[word] = seqs[0]

    def _posting(self, word: str) -> Sequence[int]:
        seq = self._once.get(word)
        if seq is not None:
            return (seq,)
        return self._many.get(word, ())

    def search(self, query: Query, *, limit: int, before_seq: int | None) -> tuple[list[int], bool]:
        """The seqs of the newest ``limit`` matches below ``before_seq``, newest first,
        and whether more exist. Walks the shortest posting list of an exact word (or
        every word the prefix starts, when there is no exact word)."""
        lists = []
        for word in query.exact:
            posting = self._posting(word)
            if not posting:
                return [], False
            lists.append(posting)
        lead: Sequence[int]
        if lists:
            lead = min(lists, key=len)
        else:
            words = list(self._vocabulary.irange(query.prefix, prefix_upper_bound(query.prefix),
                                                 inclusive=(True, False)))
            if not words:
                return [], False
            lead = self._posting(words[0]) if len(words) == 1 else sorted(
                set(itertools.chain.from_iterable(self._posting(w) for w in words))
            )
        end = len(lead) if before_seq is None else bisect.bisect_left(lead, before_seq)
        found: list[int] = []
        for i in range(end - 1, -1, -1):
            seq = lead[i]
            if query.matches(self._words_of[seq]):  # a message's words are few
                if len(found) == limit:
                    return found, True
                found.append(seq)
        return found, False
