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
        # word -> seqs of the live messages that have it. Arrays and tuples, not lists and
        # sets: the collector does not walk them, and there are several per message kept.
        self._postings: dict[str, array[int]] = {}
        # The keys of ``_postings``, sorted. Not a list: most messages bring a word never
        # seen before (a number, a name), and inserting into a long list moves all above it.
        self._vocabulary = SortedList()
        self._words_of: dict[int, tuple[str, ...]] = {}

    def update(self, seq: int, words: list[str]) -> None:
        """Message ``seq`` now has ``words`` (``[]``: deleted, or none)."""
        old = frozenset(self._words_of.pop(seq, ()))
        new = frozenset(words)
        if new:
            self._words_of[seq] = tuple(words)
        for word in old - new:
            seqs = self._postings[word]
            del seqs[bisect.bisect_left(seqs, seq)]
            if not seqs:
                del self._postings[word]
                self._vocabulary.remove(word)
        for word in new - old:
            having = self._postings.get(word)
            if having is None:
                self._postings[word] = array("q", (seq,))
                self._vocabulary.add(word)
            else:
                bisect.insort(having, seq)

    def search(self, query: Query, *, limit: int, before_seq: int | None) -> tuple[list[int], bool]:
        """The seqs of the newest ``limit`` matches below ``before_seq``, newest first,
        and whether more exist. Walks the shortest posting list of an exact word (or
        every word the prefix starts, when there is no exact word)."""
        lists = []
        for word in query.exact:
            posting = self._postings.get(word)
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
            lead = self._postings[words[0]] if len(words) == 1 else sorted(
                set(itertools.chain.from_iterable(self._postings[w] for w in words))
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
