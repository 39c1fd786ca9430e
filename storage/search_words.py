"""The words a message is found by, and the words of a search query.

Both sides go through the same steps, so that what a person types finds what
was written:

1. Word breaking by Unicode's default word boundaries (UAX #29, through the
   ``regex`` package): "don't", "3.14" and "mail.com" are one word each,
   punctuation and spaces are none. Scripts written without spaces (Chinese,
   Japanese) break into single characters, so a query finds them character by
   character, not by dictionary words.
2. Folding: case folded ("Straße" is "strasse"), compatibility-decomposed, and
   combining marks dropped, so "Resolvió" is "resolvio" and "ﬁ" is "fi".
   Text that is all ASCII (most messages) takes a shortcut with the same
   result: the default boundaries reduced to the ASCII characters they treat
   specially (``_ASCII_WORD``; a test holds it to the ``regex`` path), about
   five times faster, which matters because every message stored is broken
   into words. In other text, a word that folds to ASCII ("mañana") skips the
   ``regex`` pass over its letters (half the cost of a Spanish sentence; a test
   holds the whole path to the plain definition on random mixed scripts).
3. Each word keeps its letters and digits only: "don't" is "dont", "3.14" is
   "314". A message also stores the parts of such a word ("don", "t"; "mail",
   "com"), so a query for one part finds it too.

A message stores at most ``MAX_MESSAGE_WORDS`` distinct words (the first ones)
of at most ``MAX_WORD_LENGTH`` code points (longer words are cut, on both sides,
so they still match). A query holds 1 to ``MAX_QUERY_WORDS`` words; its last
word matches as a prefix ("deriv" finds "derivadas"), the others exactly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from .base import Message

MAX_WORD_LENGTH = 64  # code points of a stored or queried word
MAX_MESSAGE_WORDS = 512  # distinct words stored per message
MAX_QUERY_WORDS = 10
MAX_QUERY_LENGTH = 200  # code points of the query text

_BOUNDARIES = regex.compile(r"(?V1w)\b")  # UAX #29 word boundaries
_LETTERS_AND_DIGITS = regex.compile(r"[\p{L}\p{N}]+")


def fold(text: str) -> str:
    """Case folded, compatibility-decomposed, without combining marks."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


# UAX #29 on ASCII: letters, digits and "_" (ExtendNumLet) join; ":" "." "'" join two
# letters (MidLetter, MidNumLet, Single_Quote), and "." "," ";" "'" two digits (MidNum...).
_ASCII_WORD = re.compile(
    r"[A-Za-z0-9_]+(?:(?:(?<=[A-Za-z])[:.'](?=[A-Za-z])|(?<=[0-9])[.,;'](?=[0-9]))[A-Za-z0-9_]+)*"
)
_ASCII_RUN = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[list[str]]:
    """Each word of ``text`` as its runs of letters and digits, folded."""
    if text.isascii():
        return _ascii_words(text)
    return _unicode_words(text)


def _ascii_words(text: str) -> list[list[str]]:
    """``_unicode_words`` for ASCII text (folding ASCII is lowercasing)."""
    found = []
    for segment in _ASCII_WORD.findall(text.lower()):
        if segment.isalnum():  # one run (most words): no second pass
            found.append([segment[:MAX_WORD_LENGTH]])
            continue
        runs = [run[:MAX_WORD_LENGTH] for run in _ASCII_RUN.findall(segment)]
        if runs:
            found.append(runs)
    return found


def _unicode_words(text: str) -> list[list[str]]:
    found = []
    for segment in _BOUNDARIES.split(text):
        folded = segment.lower() if segment.isascii() else fold(segment)
        if folded.isascii():  # most segments, in most scripts written with Latin letters
            if folded.isalnum():
                found.append([folded[:MAX_WORD_LENGTH]])
                continue
            runs = [run[:MAX_WORD_LENGTH] for run in _ASCII_RUN.findall(folded)]
        else:
            runs = [run[:MAX_WORD_LENGTH] for run in _LETTERS_AND_DIGITS.findall(folded)]
        if runs:
            found.append(runs)
    return found


def message_words(content: str, attachments: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The distinct words a message is found by, in the order they first appear: its
    text's, then its files' names'."""
    text = "\n".join([content, *(a["name"] for a in attachments)]) if attachments else content
    if text.isascii():
        return _ascii_message_words(text)
    words: dict[str, None] = {}
    for runs in _unicode_words(text):
        whole = "".join(runs)[:MAX_WORD_LENGTH]
        for word in (whole, *runs) if len(runs) > 1 else (whole,):
            words[word] = None
            if len(words) >= MAX_MESSAGE_WORDS:
                return list(words)
    return list(words)


def _ascii_message_words(text: str) -> list[str]:
    """``message_words`` of ASCII text, in one pass over ``_ASCII_WORD``: every message
    stored is broken into words, and most of their words are one run."""
    words: dict[str, None] = {}
    for segment in _ASCII_WORD.findall(text.lower()):
        if segment.isalnum():
            words[segment[:MAX_WORD_LENGTH]] = None
        else:
            runs = [run[:MAX_WORD_LENGTH] for run in _ASCII_RUN.findall(segment)]
            if not runs:
                continue
            words["".join(runs)[:MAX_WORD_LENGTH]] = None
            if len(runs) > 1:
                words.update(dict.fromkeys(runs))
        if len(words) >= MAX_MESSAGE_WORDS:
            return list(words)[:MAX_MESSAGE_WORDS]
    return list(words)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: every word of ``exact`` and a word starting with ``prefix``."""

    exact: tuple[str, ...]
    prefix: str

    def matches(self, words: Collection[str]) -> bool:
        """Whether a message with ``words`` is a result."""
        return all(word in words for word in self.exact) and (
            self.prefix in words or any(word.startswith(self.prefix) for word in words)
        )


class QueryError(ValueError):
    """A query the protocol refuses (no word, too many words)."""


def parse_query(text: str) -> Query:
    """The query's words (joined like a message's whole words); the last one typed is the prefix."""
    words = ["".join(runs)[:MAX_WORD_LENGTH] for runs in _words(text)]
    if not words:
        raise QueryError("Must contain at least one word (letters or digits).")
    if len(words) > MAX_QUERY_WORDS:
        raise QueryError(f"At most {MAX_QUERY_WORDS} words, not {len(words)}.")
    return Query(tuple(dict.fromkeys(words[:-1])), words[-1])


def prefix_upper_bound(prefix: str) -> str:
    """The least string above every string that starts with ``prefix``."""
    return prefix + "\U0010ffff"


def newest_first(pages: list[tuple[list[Message], bool]], limit: int) -> tuple[list[Message], bool]:
    """One group's results per page (newest first, up to ``limit``, and whether more
    exist) merged into the newest ``limit`` of all, and whether more exist."""
    merged = sorted(
        (m for page, _ in pages for m in page),
        key=lambda m: (m["timestamp"], m["id"]),  # ids: ObjectIds, rising within a process
        reverse=True,
    )
    return merged[:limit], len(merged) > limit or any(more for _, more in pages)
