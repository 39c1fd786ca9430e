"""The store interface the chat needs, and the value types that cross it.

Everything above this package sees plain Python values: ids are lowercase
24-hex strings, messages are wire-ready dicts (see ``docs/protocol.md``),
timestamps are ISO 8601 strings. Backends convert BSON at their own edge.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from . import search_words

ID_RE = re.compile(r"[0-9a-fA-F]{24}")  # use with fullmatch


class Message(TypedDict):
    """A stored chat message exactly as it goes on the wire."""

    type: str
    kind: str  # "message", "question", or "system" for the platform's own messages
    id: str
    seq: int
    rev: int  # the revision of the message's latest change (0: stored before revisions)
    group_id: str
    sender_id: str | None
    sender: str
    sender_name: str
    content: str
    timestamp: str
    client_msg_id: str | None
    edited_at: str | None
    deleted: bool
    mentions: Sequence[str]  # user ids the sender mentioned (empty when none)
    reply_to: dict[str, Any] | None  # what the reply quotes (``conversation.reply_snapshot``)
    reactions: Sequence[dict[str, Any]]  # [{emoji, count, user_ids}] in the order first used
    pinned: dict[str, Any] | None  # {by, at} while pinned
    answer_id: str | None  # a question's accepted answer
    attachments: Sequence[dict[str, Any]]
    deleted_by: str | None  # a moderator who deleted someone else's message


class NewMessage(TypedDict):
    """One send for ``Store.add_messages``: ``Store.add_message``'s keyword arguments."""

    sender_id: str | None
    sender_name: str
    content: str
    client_msg_id: str | None
    mentions: NotRequired[Sequence[str]]
    kind: NotRequired[str]
    reply_to: NotRequired[dict[str, Any] | None]
    attachments: NotRequired[Sequence[dict[str, Any]]]
    message_id: NotRequired[str | None]


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class GroupAccess:
    """A group as seen by one user: whether it exists is the caller's question."""

    id: str
    name: str
    is_member: bool


@dataclass(frozen=True, slots=True)
class GroupSummary:
    id: str
    name: str
    latest_seq: int
    unread_count: int
    latest_rev: int
    mention_count: int = 0
    open_questions: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "latest_seq": self.latest_seq,
            "latest_rev": self.latest_rev,
            "unread_count": self.unread_count,
            "mention_count": self.mention_count,
            "open_questions": self.open_questions,
        }


@dataclass(frozen=True, slots=True)
class ReadState:
    last_read_seq: int
    unread_count: int
    mention_count: int = 0  # live messages of others above the marker that mention the reader


class StorageUnavailable(Exception):
    """The backend did not answer; the operation may or may not have happened."""


# A store that stores a message without waiting (the embedded one) also has
# ``add_message_at_once(group_id, send)``: ``Store.add_message`` of ``send``, done before it
# returns. The chat writes a send that finds its group idle with it, on the spot.
AddAtOnce = Callable[[str, NewMessage], tuple[Message, bool]]


class Store(Protocol):
    """What the chat needs from persistence. Implemented by ``memory`` and ``mongo``."""

    async def open(self) -> None:
        """Connect and create indexes (idempotent)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` when the backend does not answer."""

    async def get_user(self, user_id: str) -> User | None:
        """The user's display name, or ``None`` when there is no ``users`` document."""

    async def get_group(self, group_id: str, user_id: str) -> GroupAccess | None:
        """The group and whether ``user_id`` is a member; ``None`` if it does not exist."""

    async def list_groups(self, user_id: str) -> list[GroupSummary]:
        """The user's groups ordered by name, with ``latest_seq`` and unread counts."""

    async def get_group_for(self, group_id: str, user_ids: Collection[str]) -> dict[str, GroupAccess] | None:
        """``get_group`` for several users of one group in one read (``None``: no such group)."""

    async def group_members(self, group_id: str) -> frozenset[str] | None:
        """The group's member ids now; ``None`` when the group does not exist."""

    async def user_groups(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        """The ids of the groups each of ``user_ids`` is a member of now (every one a key)."""

    async def add_message(
        self,
        group_id: str,
        *,
        sender_id: str | None,
        sender_name: str,
        content: str,
        client_msg_id: str | None,
        mentions: Sequence[str] = (),
        kind: str = "message",
        reply_to: dict[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> tuple[Message, bool]:
        """Store a message with the group's next ``seq`` and next ``rev`` (and the id
        ``message_id`` when given: a new one otherwise).

        ``mentions`` (lowercase ids, distinct, members: checked by the caller),
        ``reply_to`` (``conversation.reply_snapshot``) and ``attachments`` (the
        wire form of files claimed by the caller) are stored as given. Returns ``(message, duplicate)``: when ``(sender,
        group, client_msg_id)`` was stored before, the first stored message and
        ``True``. The platform's own messages (``kind="system"``) have no sender
        id: their ``client_msg_id`` is one key space per group.
        """

    async def add_messages(
        self, group_id: str, sends: Sequence[NewMessage]
    ) -> list[tuple[Message, bool] | StorageUnavailable]:
        """Store several sends to one group in order, exactly as ``add_message`` would
        one after the other, in as few writes as the backend can (MongoDB: one
        ordered ``insert_many``). Each send's answer is in its place: its
        ``(message, duplicate)``, or the ``StorageUnavailable`` that kept it from being
        stored (or from being known stored); a send never depends on a later one's outcome."""

    async def non_members(self, group_id: str, user_ids: Sequence[str]) -> list[str]:
        """Those of ``user_ids`` (lowercase hex) that are not members of the group, in the given order."""

    async def get_messages(
        self,
        group_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
        tag: str | None = None,
        latest_seq: int | None = None,
    ) -> tuple[list[Message], bool]:
        """A page of messages, oldest first, and whether more exist in that direction.

        With neither bound: the latest ``limit`` (``has_more``: older exist).
        ``before_seq``: the newest ``limit`` below it (older exist).
        ``after_seq``: the oldest ``limit`` above it (newer exist).
        With ``tag`` (``conversation.tags``), only the messages that have it.
        ``latest_seq``: the group's top ``seq`` as the caller has just read it; a page
        without ``after_seq`` ends there (and the top is not read again).
        """

    async def latest_seq(self, group_id: str) -> int: ...

    async def latest_rev(self, group_id: str) -> int:
        """The group's latest revision (0 when nothing has one yet)."""

    async def get_changes(
        self, group_id: str, *, after_rev: int, limit: int
    ) -> tuple[list[Message], bool, int]:
        """The current state of the messages whose ``rev`` is above ``after_rev``,
        in increasing ``rev``, at most ``limit``; whether more follow; and the
        latest ``rev`` when the page was read (a change above it may be missing
        from the page even if it changed a message in the page's range: its
        message comes again at its newer ``rev``)."""

    async def get_message(self, group_id: str, message_id: str) -> Message | None: ...

    async def edit_message(
        self, group_id: str, message_id: str, sender_id: str, content: str
    ) -> Message | None:
        """Replace the content of a live message of ``sender_id`` (taking the group's
        next ``rev``); ``None`` if none matched."""

    async def delete_message(
        self, group_id: str, message_id: str, sender_id: str | None, *, deleted_by: str | None = None
    ) -> Message | None:
        """Tombstone a live message of ``sender_id`` (any sender's for ``None``: a
        moderator's, recorded as ``deleted_by``), taking the group's next ``rev``;
        ``None`` if none matched."""

    async def react(
        self, group_id: str, message_id: str, user_id: str, emoji: str, on: bool
    ) -> tuple[Message, bool] | None:
        """Add or remove ``user_id``'s ``emoji`` on a live message (the group's next
        ``rev`` when that changes anything): the message and whether it changed;
        ``None`` when there is no such live message. Raises
        ``conversation.TooManyEmoji`` for one emoji too many."""

    async def pin(
        self, group_id: str, message_id: str, by: str | None
    ) -> tuple[Message, bool] | None:
        """Pin a live message (``by`` the user, now) or unpin it (``None``), as
        ``react`` answers. Raises ``conversation.TooManyPins`` for one pin too many."""

    async def set_answer(
        self, group_id: str, question_id: str, answer_id: str | None
    ) -> tuple[Message, bool] | None:
        """Set or clear a live question's accepted answer, as ``react`` answers."""

    async def open_questions(self, group_id: str, *, latest_rev: int | None = None) -> int:
        """Live questions without an accepted answer. ``latest_rev``: the group's top
        ``rev`` when the caller has just read it (the count is then as of at least that)."""

    async def search_messages(
        self, group_ids: Sequence[str], query: search_words.Query, *, limit: int, before_seq: int | None = None
    ) -> tuple[list[Message], bool]:
        """The newest ``limit`` live messages of ``group_ids`` that ``query`` matches
        (``storage.search_words``), below ``before_seq`` in each group, newest first
        across groups; and whether more exist."""

    async def read_state(
        self, group_id: str, user_id: str, *, latest_seq: int | None = None, latest_rev: int | None = None
    ) -> ReadState:
        """The marker, and the unread messages and mentions of others above it.
        ``latest_seq`` and ``latest_rev``: the group's top ``seq`` and ``rev`` when the
        caller has just read them (a join has), so the store need not read them again."""

    async def mark_read(self, group_id: str, user_id: str, seq: int) -> ReadState:
        """Move the marker to ``max(previous, min(seq, latest_seq))``."""


def display_name(doc: dict[str, Any] | None, user_id: str) -> str:
    """``full_name`` and ``last_name`` stripped and joined; the id when both are empty."""
    if doc:
        parts = []
        for key in ("full_name", "last_name"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                parts.append(value.strip())
        if parts:
            return " ".join(parts)
    return user_id


def iso_timestamp(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix."""
    if moment.tzinfo is not None and moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"  # drops any "+00:00"


_stamp: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """``iso_timestamp(now_ms())``, formatted once per millisecond."""
    global _stamp
    ms = time.time_ns() // 1_000_000
    if ms != _stamp[0]:
        moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        _stamp = (ms, iso_timestamp(moment))
    return _stamp[1]


def now_ms() -> datetime:
    """The current UTC time truncated to milliseconds (what BSON dates can hold)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def tombstone(message: Message) -> Message:
    """The deleted form of ``message``: identity and metadata kept; content, mentions,
    reactions, pin and attachments gone."""
    return {
        **message, "content": "", "deleted": True, "mentions": [], "reactions": [],
        "pinned": None, "attachments": [],
    }
