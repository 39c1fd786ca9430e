"""The embedded store's search: per group, a posting list of ``seq`` for every
word and the sorted vocabulary (for the prefix), kept as messages change.

A new message's words may be indexed later (``add_later``): the store does it
once the broadcast of the send is written (at the end of the loop iteration),
so breaking a message into words and filing them is not in the way of its
delivery. Every read and every change of the index files what waits first, so
no search misses a stored message."""

from __future__ import annotations

import bisect
import itertools
import logging
import sys
from array import array
from collections.abc import Sequence

from sortedcontainers import SortedList

from .search_words import Query, message_words, prefix_upper_bound

log = logging.getLogger(__name__)

_SEQ = 8  # bytes of one seq in a posting: a signed 64-bit int, as an ``array("q")`` item
_ORDER = sys.byteorder  # what ``array("q").frombytes`` reads


def _last(seqs: bytearray) -> int:
    return int.from_bytes(seqs[-_SEQ:], _ORDER, signed=True)


class _Seqs:
    """A packed posting as a sequence of ints, for ``bisect`` (nothing is copied)."""

    __slots__ = ("_seqs",)

    def __init__(self, seqs: bytearray) -> None:
        self._seqs = seqs

    def __len__(self) -> int:
        return len(self._seqs) // _SEQ

    def __getitem__(self, i: int) -> int:
        return int.from_bytes(self._seqs[i * _SEQ:(i + 1) * _SEQ], _ORDER, signed=True)


class WordIndex:
    """One group's words."""

    def __init__(self) -> None:
        # A word's seqs, split by how many live messages have it. Most words are in one
        # message only (a number, a name): ``_once`` maps them to that seq, and a dict of
        # strings to ints is one the garbage collector stops tracking, so however big it
        # grows a full collection does not walk it. The others map to their seqs, sorted,
        # packed in a ``bytearray`` (``_SEQ`` bytes each) in ``_many``: a bytearray is no
        # object the collector tracks (an ``array`` is: one per word seen twice made a
        # full collection walk a million of them at a million messages).
        self._once: dict[str, int] = {}
        self._many: dict[str, bytearray] = {}
        # Every word of ``_once`` and ``_many``, sorted. Not a list: most messages bring a
        # word never seen before, and inserting into a long list moves all above it.
        self._vocabulary = SortedList()
        self._words_of: dict[int, tuple[str, ...]] = {}  # tuples of strings: not walked either
        self._top = 0  # the highest seq ever indexed: a new message's goes at the end of each posting
        # New messages whose words wait to be filed: (seq, content, attachments).
        self._later: list[tuple[int, str, Sequence[dict]]] = []

    def add_later(self, seq: int, content: str, attachments: Sequence[dict]) -> None:
        """A new message, filed at the next ``catch_up`` (or read or change, whichever comes first)."""
        self._later.append((seq, content, attachments))

    def catch_up(self) -> None:
        """File the words of the messages that wait (one that cannot be filed is left
        out of search, and logged, rather than holding up the others)."""
        while self._later:
            later, self._later = self._later, []
            for seq, content, attachments in later:
                try:
                    self._update(seq, message_words(content, attachments))
                except Exception:
                    log.exception("the words of message %d could not be indexed", seq)

    def update(self, seq: int, words: list[str]) -> None:
        """Message ``seq`` now has ``words`` (distinct; ``[]``: deleted, or none)."""
        if self._later:
            self.catch_up()
        self._update(seq, words)

    def _update(self, seq: int, words: list[str]) -> None:
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
        packed = seq.to_bytes(_SEQ, _ORDER, signed=True)
        newest = seq > self._top
        if newest:
            self._top = seq
        for word in words:
            seqs = many.get(word)
            if seqs is not None:
                if newest or _last(seqs) < seq:
                    seqs += packed
                else:
                    at = bisect.bisect_left(_Seqs(seqs), seq) * _SEQ
                    seqs[at:at] = packed
                continue
            other = once.pop(word, None)
            if other is None:
                once[word] = seq
                self._vocabulary.add(word)
            else:
                low, high = (other, seq) if other < seq else (seq, other)
                many[word] = bytearray(low.to_bytes(_SEQ, _ORDER, signed=True) + high.to_bytes(_SEQ, _ORDER, signed=True))

    def _remove(self, seq: int, word: str) -> None:
        seqs = self._many.get(word)
        if seqs is None:
            del self._once[word]
            self._vocabulary.remove(word)
            return
        at = bisect.bisect_left(_Seqs(seqs), seq) * _SEQ
        del seqs[at:at + _SEQ]
        if len(seqs) == _SEQ:
            del self._many[word]
            self._once[word] = _last(seqs)

    def _posting(self, word: str) -> Sequence[int]:
        seq = self._once.get(word)
        if seq is not None:
            return (seq,)
        seqs = self._many.get(word)
        if seqs is None:
            return ()
        posting = array("q")
        posting.frombytes(seqs)  # a copy: the index may change while the caller walks it
        return posting

    def search(self, query: Query, *, limit: int, before_seq: int | None) -> tuple[list[int], bool]:
        """The seqs of the newest ``limit`` matches below ``before_seq``, newest first,
        and whether more exist. Walks the shortest posting list of an exact word (or
        every word the prefix starts, when there is no exact word)."""
        if self._later:
            self.catch_up()
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
