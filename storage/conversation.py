"""The conversation state a message carries besides its text, shared by both stores.

Reactions, pins, accepted answers and replies change a message the way an edit
does (the group's next ``rev``); the rules every store applies the same way
are here, on plain values:

- ``Reactions``: the full list of reactors per emoji, in the order each emoji
  was first used (the wire form shows the first ``REACTORS_SHOWN`` of them).
- ``tags``: the index keys the filtered histories and the counts read (a
  question, an open question, a pinned message, a mention of a user). Only a
  live message has any, so deleted messages never show in a filter or a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MAX_EMOJI_PER_MESSAGE = 20
MAX_PINNED_PER_GROUP = 50
REACTORS_SHOWN = 20
EXCERPT_LENGTH = 140

QUESTION = "question"  # kinds of message
PLAIN = "message"
SYSTEM = "system"

# Tags, and the history filters that read them.
TAG_QUESTION = "question"
TAG_UNANSWERED = "unanswered"
TAG_PINNED = "pinned"
MENTION_PREFIX = "mention:"
FILTERS = ("questions", "unanswered", "pinned", "mentions")

Reactions = list[tuple[str, list[str]]]  # (emoji, every reactor's id, first first)


class TooManyEmoji(Exception):
    """A new emoji on a message that already has ``MAX_EMOJI_PER_MESSAGE``."""


class TooManyPins(Exception):
    """A pin in a group that already has ``MAX_PINNED_PER_GROUP`` pinned messages."""


def mention_tag(user_id: str) -> str:
    return MENTION_PREFIX + user_id


def filter_tag(name: str, user_id: str) -> str:
    """The tag a ``get_history`` filter reads for ``user_id``."""
    return {
        "questions": TAG_QUESTION,
        "unanswered": TAG_UNANSWERED,
        "pinned": TAG_PINNED,
        "mentions": mention_tag(user_id),
    }[name]


def tags(message: Mapping[str, Any]) -> list[str]:
    """The tags of a message in its current state (wire form); none when deleted.

    A sender's mention of themselves is not a mention (it would count as unread
    news they wrote)."""
    if message["deleted"]:
        return []
    found: list[str] = []
    if message.get("kind") == QUESTION:
        found.append(TAG_QUESTION)
        if message.get("answer_id") is None:
            found.append(TAG_UNANSWERED)
    if message.get("pinned") is not None:
        found.append(TAG_PINNED)
    sender = message.get("sender_id")
    found.extend(mention_tag(u) for u in message.get("mentions") or () if u != sender)
    return found


def react(reactions: Reactions, user_id: str, emoji: str, on: bool) -> Reactions | None:
    """``reactions`` with ``user_id``'s ``emoji`` added or removed; ``None`` when that
    changes nothing (adding twice, removing what is not there)."""
    for i, (existing, users) in enumerate(reactions):
        if existing != emoji:
            continue
        if on == (user_id in users):
            return None
        if on:
            changed = [*users, user_id]
        else:
            changed = [u for u in users if u != user_id]
        updated = list(reactions)
        if changed:
            updated[i] = (emoji, changed)
        else:
            del updated[i]
        return updated
    if not on:
        return None
    if len(reactions) >= MAX_EMOJI_PER_MESSAGE:
        raise TooManyEmoji
    return [*reactions, (emoji, [user_id])]


def reactions_to_wire(reactions: Iterable[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    return [
        {"emoji": emoji, "count": len(users), "user_ids": users[:REACTORS_SHOWN]}
        for emoji, users in reactions
    ]


def reply_snapshot(replied: Mapping[str, Any]) -> dict[str, Any]:
    """What a reply keeps of the message it answers, as that message is now."""
    deleted = bool(replied["deleted"])
    return {
        "id": replied["id"],
        "seq": replied["seq"],
        "sender_id": replied["sender_id"],
        "sender_name": replied["sender_name"],
        "excerpt": "" if deleted else replied["content"][:EXCERPT_LENGTH],
        "deleted": deleted,
    }
