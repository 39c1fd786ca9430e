"""The embedded store's search: per group, a posting list of ``seq`` for every
word and the sorted vocabulary (for the prefix), kept as messages change."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from sortedcontainers import SortedList

from .search_words import Query, prefix_upper_bound


class WordIndex:
    """One group's words."""

    def __init__(self) -> None:
        # word -> the seq of the one live message that has it, or the seqs (sorted) of all
        # that do. Most words seen once (a number, a name) stay a bare int: a list per word
        # would be several objects per stored message for the garbage collector to walk.
        self._postings: dict[str, int | list[int]] = {}
        # The keys of ``_postings``, sorted. Not a list: most messages bring a word never
        # seen before, and inserting into a long list moves all above it.
        self._vocabulary = SortedList()
        self._words_of: dict[int, tuple[str, ...]] = {}  # tuples of strings: not walked either

    def update(self, seq: int, words: list[str]) -> None:
        """Message ``seq`` now has ``words`` (``[]``: deleted, or none)."""
        old = frozenset(self._words_of.pop(seq, ()))
        new = frozenset(words)
        if new:
            self._words_of[seq] = tuple(words)
        for word in old - new:
            seqs = self._postings[word]
            if isinstance(seqs, list):
                del seqs[bisect.bisect_left(seqs, seq)]
                if len(seqs) > 1:
                    continue
                if seqs:
                    self._postings[word] = seqs[0]
                    continue
            del self._postings[word]
            self._vocabulary.remove(word)
        for word in new - old:
            having = self._postings.get(word)
            if having is None:
                self._postings[word] = seq
                self._vocabulary.add(word)
            elif isinstance(having, int):
                self._postings[word] = [having, seq] if having < seq else [seq, having]
            else:
                bisect.insort(having, seq)

    def _posting(self, word: str) -> Sequence[int]:
        having = self._postings.get(word)
        if having is None:
            return ()
        return (having,) if isinstance(having, int) else having

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
