"""The embedded in-memory store: the ``--demo`` default and the fast test double.

Nothing survives a restart. All operations run on the event loop without
awaiting in the middle, so each one is atomic with respect to the others and
per-group ``seq`` and ``rev`` allocation is contiguous without a lock.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import conversation
from .base import (
    GroupAccess,
    GroupSummary,
    Message,
    NewMessage,
    ReadState,
    StorageUnavailable,
    User,
    display_name,
    now_iso,
    tombstone,
)
from .memory_search import WordIndex
from .search_words import Query, message_words, newest_first


class _MessageIds:
    """Ids shaped as MongoDB's ObjectIds (a timestamp, a random part of this store's own and a
    counter, 24 lowercase hex digits), as unique as ``str(ObjectId())`` within one process and
    a quarter of its cost: one is made for every message stored."""

    def __init__(self) -> None:
        self._middle = os.urandom(5).hex()
        self._count = int.from_bytes(os.urandom(3), "big")

    def next(self) -> str:
        self._count = (self._count + 1) & 0xFFFFFF
        return f"{int(time.time()) & 0xFFFFFFFF:08x}{self._middle}{self._count:06x}"


@dataclass
class _Group:
    name: str
    members: set[str]
    messages: list[Message] = field(default_factory=list)  # index i holds seq i + 1
    # The indexes beside the history hold ints, not messages: a dict of strings to ints is
    # one the garbage collector stops tracking, and arrays of ints have no items for it to
    # visit, while a dict of messages or a list of tuples it walks item by item on every
    # full collection (at a million messages, ~35 ms each).
    by_id: dict[str, int] = field(default_factory=dict)  # message id -> seq
    # Per sender, the seqs of its messages by client_msg_id.
    by_client_id: dict[str | None, dict[str, int]] = field(default_factory=dict)
    # Messages of each sender (None: the platform's) that count as unread for others, sorted by seq.
    live_seqs_by_sender: dict[str | None, array[int]] = field(default_factory=dict)
    live_count: int = 0
    rev: int = 0  # the latest revision
    # The rev and the seq of every change, in rev order; an entry whose message has
    # changed since is skipped when read.
    change_revs: array[int] = field(default_factory=lambda: array("q"))
    change_seqs: array[int] = field(default_factory=lambda: array("q"))
    superseded: int = 0  # entries of the change log whose message changed again
    reactors: dict[str, conversation.Reactions] = field(default_factory=dict)  # message id -> every reactor
    tagged: dict[str, list[int]] = field(default_factory=dict)  # tag -> seqs of the messages that have it
    words: WordIndex = field(default_factory=WordIndex)  # search

    def find(self, message_id: str) -> Message | None:
        seq = self.by_id.get(message_id)
        return None if seq is None else self.messages[seq - 1]


class MemoryStore:
    """A ``Store`` kept in process memory."""

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._groups: dict[str, _Group] = {}
        self._read: dict[tuple[str, str], int] = {}
        self._ids = _MessageIds()
        self._unindexed: set[WordIndex] = set()  # indexes with new messages to file at the end of the iteration

    def _index_soon(self, words: WordIndex) -> None:
        """File a new message's words at the end of this loop iteration, after the send's
        broadcast is written (at once when no loop runs: seeding)."""
        if words in self._unindexed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            words.catch_up()
            return
        if not self._unindexed:
            loop.call_soon(self._index_now)
        self._unindexed.add(words)

    def _index_now(self) -> None:
        waiting, self._unindexed = self._unindexed, set()
        for words in waiting:
            words.catch_up()

    # -- seeding (the wider application's collections; not part of ``Store``) --

    def add_user(self, user_id: str, full_name: str = "", last_name: str = "") -> User:
        user_id = user_id.lower()
        user = User(user_id, display_name({"full_name": full_name, "last_name": last_name}, user_id))
        self._users[user_id] = user
        return user

    def add_group(self, group_id: str, name: str, members: list[str]) -> None:
        self._groups[group_id.lower()] = _Group(name, {m.lower() for m in members})

    def set_members(self, group_id: str, members: list[str]) -> None:
        self._groups[group_id.lower()].members = {m.lower() for m in members}

    def remove_group(self, group_id: str) -> None:
        self._groups.pop(group_id.lower(), None)

    def users(self) -> list[User]:
        return list(self._users.values())

    # -- Store --

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def get_user(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    async def get_group(self, group_id: str, user_id: str) -> GroupAccess | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        return GroupAccess(group_id, group.name, user_id in group.members)

    async def get_group_for(self, group_id: str, user_ids: Collection[str]) -> dict[str, GroupAccess] | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        return {user_id: GroupAccess(group_id, group.name, user_id in group.members) for user_id in user_ids}

    async def group_members(self, group_id: str) -> frozenset[str] | None:
        group = self._groups.get(group_id)
        return None if group is None else frozenset(group.members)

    async def user_groups(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {user_id: set() for user_id in user_ids}
        for group_id, group in self._groups.items():
            for user_id in group.members & found.keys():
                found[user_id].add(group_id)
        return found

    async def list_groups(self, user_id: str) -> list[GroupSummary]:
        summaries = []
        for gid, group in self._groups.items():
            if user_id in group.members:
                read = self._read_state(group, user_id, self._read.get((gid, user_id), 0))
                summaries.append(GroupSummary(
                    gid, group.name, len(group.messages), read.unread_count, group.rev,
                    read.mention_count, len(group.tagged.get(conversation.TAG_UNANSWERED, ())),
                ))
        summaries.sort(key=lambda s: (s.name, s.id))
        return summaries

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
        return self._add_now(group_id, {
            "sender_id": sender_id, "sender_name": sender_name, "content": content, "client_msg_id": client_msg_id,
            "mentions": mentions, "kind": kind, "reply_to": reply_to, "attachments": attachments,
            "message_id": message_id,
        })

    def _add_now(self, group_id: str, send: NewMessage) -> tuple[Message, bool]:
        client_msg_id = send["client_msg_id"]
        if client_msg_id is not None:
            group = self._groups[group_id]
            first = group.by_client_id.get(send["sender_id"], {}).get(client_msg_id)
            if first is not None:
                return _wire(group.messages[first - 1]), True
        return self.seed_message(group_id, **send), False

    async def add_messages(
        self, group_id: str, sends: Sequence[NewMessage]
    ) -> list[tuple[Message, bool] | StorageUnavailable]:
        return [await self.add_message(group_id, **send) for send in sends]

    # See ``storage.base.AddAtOnce``.
    add_message_at_once = _add_now

    def seed_message(
        self,
        group_id: str,
        *,
        sender_id: str | None,
        sender_name: str,
        content: str,
        client_msg_id: str | None = None,
        mentions: Sequence[str] = (),
        kind: str = "message",
        reply_to: dict[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> Message:
        """Append a message with the next ``seq`` (synchronous: used by seeding too)."""
        group = self._groups[group_id]
        message_id = message_id or self._ids.next()
        seq = len(group.messages) + 1
        message: Message = {
            "type": "message",
            "kind": kind,
            "id": message_id,
            "seq": seq,
            "rev": self._next_rev(group, seq),
            "group_id": group_id,
            "sender_id": sender_id,
            "sender": sender_name,
            "sender_name": sender_name,
            "content": content,
            "timestamp": now_iso(),
            "client_msg_id": client_msg_id,
            "edited_at": None,
            "deleted": False,
            # Tuples, not lists: a message whose values are all atoms is a dict the garbage
            # collector stops walking, so its pauses grow far more slowly with the history kept.
            "mentions": tuple(mentions),
            "reply_to": reply_to,
            "reactions": (),
            "pinned": None,
            "answer_id": None,
            "attachments": tuple(map(dict, attachments)) if attachments else (),
            "deleted_by": None,
        }
        group.messages.append(message)
        group.by_id[message_id] = seq
        for tag in conversation.tags(message):
            bisect.insort(group.tagged.setdefault(tag, []), seq)
        group.words.add_later(seq, content, message["attachments"])
        self._index_soon(group.words)
        if client_msg_id is not None:
            group.by_client_id.setdefault(sender_id, {})[client_msg_id] = seq
        mine = group.live_seqs_by_sender.get(sender_id)
        if mine is None:
            mine = group.live_seqs_by_sender[sender_id] = array("q")
        mine.append(seq)
        group.live_count += 1
        return _wire(message)

    async def non_members(self, group_id: str, user_ids: Sequence[str]) -> list[str]:
        members = self._groups[group_id].members
        return [user_id for user_id in user_ids if user_id not in members]

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
        messages = self._groups[group_id].messages
        if tag is not None:
            return self._tagged_page(self._groups[group_id], tag, limit, before_seq, after_seq)
        if after_seq is not None:
            page = messages[after_seq : after_seq + limit]
            return [_wire(m) for m in page], after_seq + limit < len(messages)
        latest = len(messages) if latest_seq is None else min(latest_seq, len(messages))
        end = latest if before_seq is None else min(before_seq - 1, latest)
        start = max(0, end - limit)
        return [_wire(m) for m in messages[start:end]], start > 0

    async def latest_seq(self, group_id: str) -> int:
        return len(self._groups[group_id].messages)

    async def latest_rev(self, group_id: str) -> int:
        return self._groups[group_id].rev

    async def get_changes(
        self, group_id: str, *, after_rev: int, limit: int
    ) -> tuple[list[Message], bool, int]:
        group = self._groups[group_id]
        page: list[Message] = []
        revs, seqs = group.change_revs, group.change_seqs
        for i in range(bisect.bisect_right(revs, after_rev), len(revs)):
            rev, message = revs[i], group.messages[seqs[i] - 1]
            if message["rev"] != rev:
                continue  # changed again later: it comes at its latest rev
            if len(page) == limit:
                return page, True, group.rev
            page.append(_wire(message))
        return page, False, group.rev

    async def get_message(self, group_id: str, message_id: str) -> Message | None:
        group = self._groups.get(group_id)
        message = None if group is None else group.find(message_id)
        return None if message is None else _wire(message)

    async def edit_message(
        self, group_id: str, message_id: str, sender_id: str, content: str
    ) -> Message | None:
        group = self._groups[group_id]
        current = group.find(message_id)
        if current is None or current["deleted"] or current["sender_id"] != sender_id:
            return None
        updated: Message = {
            **current,
            "content": content,
            "edited_at": now_iso(),
            "rev": self._next_rev(group, current["seq"]),
        }
        self._replace(group, updated)
        return _wire(updated)

    async def delete_message(
        self, group_id: str, message_id: str, sender_id: str | None, *, deleted_by: str | None = None
    ) -> Message | None:
        group = self._groups[group_id]
        current = group.find(message_id)
        if current is None or current["deleted"] or sender_id not in (None, current["sender_id"]):
            return None
        updated = tombstone(current)
        updated["deleted_by"] = deleted_by
        updated["rev"] = self._next_rev(group, current["seq"])
        self._replace(group, updated)
        group.reactors.pop(message_id, None)
        seqs = group.live_seqs_by_sender[current["sender_id"]]
        del seqs[bisect.bisect_left(seqs, updated["seq"])]
        group.live_count -= 1
        return _wire(updated)

    async def react(
        self, group_id: str, message_id: str, user_id: str, emoji: str, on: bool
    ) -> tuple[Message, bool] | None:
        group = self._groups[group_id]
        current = group.find(message_id)
        if current is None or current["deleted"]:
            return None
        reactions = conversation.react(group.reactors.get(message_id, []), user_id, emoji, on)
        if reactions is None:
            return _wire(current), False
        group.reactors[message_id] = reactions
        return self._change(group, current, reactions=conversation.reactions_to_wire(reactions)), True

    async def pin(
        self, group_id: str, message_id: str, by: str | None
    ) -> tuple[Message, bool] | None:
        group = self._groups[group_id]
        current = group.find(message_id)
        if current is None or current["deleted"]:
            return None
        if (current["pinned"] is not None) == (by is not None):
            return _wire(current), False
        if by is not None and len(group.tagged.get(conversation.TAG_PINNED, ())) >= conversation.MAX_PINNED_PER_GROUP:
            raise conversation.TooManyPins
        pinned = None if by is None else {"by": by, "at": now_iso()}
        return self._change(group, current, pinned=pinned), True

    async def set_answer(
        self, group_id: str, question_id: str, answer_id: str | None
    ) -> tuple[Message, bool] | None:
        group = self._groups[group_id]
        current = group.find(question_id)
        if current is None or current["deleted"]:
            return None
        if current["answer_id"] == answer_id:
            return _wire(current), False
        return self._change(group, current, answer_id=answer_id), True

    async def search_messages(
        self, group_ids: Sequence[str], query: Query, *, limit: int, before_seq: int | None = None
    ) -> tuple[list[Message], bool]:
        pages = []
        for group_id in group_ids:
            group = self._groups.get(group_id)
            if group is not None:
                seqs, more = group.words.search(query, limit=limit, before_seq=before_seq)
                pages.append(([_wire(group.messages[seq - 1]) for seq in seqs], more))
        return newest_first(pages, limit)

    async def open_questions(self, group_id: str, *, latest_rev: int | None = None) -> int:
        return len(self._groups[group_id].tagged.get(conversation.TAG_UNANSWERED, ()))

    async def read_state(
        self, group_id: str, user_id: str, *, latest_seq: int | None = None, latest_rev: int | None = None
    ) -> ReadState:
        group = self._groups[group_id]
        last = self._read.get((group_id, user_id), 0)
        return self._read_state(group, user_id, last)

    async def mark_read(self, group_id: str, user_id: str, seq: int) -> ReadState:
        group = self._groups[group_id]
        key = (group_id, user_id)
        last = max(self._read.get(key, 0), min(seq, len(group.messages)))
        self._read[key] = last
        return self._read_state(group, user_id, last)

    # -- helpers --

    @staticmethod
    def _next_rev(group: _Group, seq: int) -> int:
        """Take the group's next revision for a change of message ``seq`` (a new message:
        the group's next seq)."""
        group.rev += 1
        group.change_revs.append(group.rev)
        group.change_seqs.append(seq)
        if seq <= len(group.messages):  # a stored message changed: its older entry is superseded
            group.superseded += 1
            if group.superseded > len(group.change_revs) // 2 and len(group.change_revs) > 1024:
                # Keep the log proportional to the messages: drop superseded entries.
                messages = group.messages
                kept = [(rev, changed) for rev, changed in zip(group.change_revs, group.change_seqs, strict=True)
                        if changed == seq or messages[changed - 1]["rev"] == rev]
                group.change_revs = array("q", [rev for rev, _ in kept])
                group.change_seqs = array("q", [changed for _, changed in kept])
                group.superseded = 0
        return group.rev

    def _change(self, group: _Group, current: Message, **fields: Any) -> Message:
        """``current`` with ``fields`` changed, at the group's next revision."""
        updated: Message = {**current, **fields}  # type: ignore[typeddict-item]
        updated["rev"] = self._next_rev(group, current["seq"])
        self._replace(group, updated)
        return _wire(updated)

    def _read_state(self, group: _Group, user_id: str, last: int) -> ReadState:
        mentions = group.tagged.get(conversation.mention_tag(user_id), [])
        mentioned = len(mentions) - bisect.bisect_right(mentions, last)
        return ReadState(last, self._unread(group, user_id, last), mentioned)

    @staticmethod
    def _tagged_page(
        group: _Group, tag: str, limit: int, before_seq: int | None, after_seq: int | None
    ) -> tuple[list[Message], bool]:
        """``get_messages`` over the messages that have ``tag``."""
        seqs = group.tagged.get(tag, [])
        if after_seq is not None:
            start = bisect.bisect_right(seqs, after_seq)
            page = seqs[start : start + limit]
            more = start + limit < len(seqs)
        else:
            end = len(seqs) if before_seq is None else bisect.bisect_left(seqs, before_seq)
            start = max(0, end - limit)
            page, more = seqs[start:end], start > 0
        return [_wire(group.messages[seq - 1]) for seq in page], more

    @staticmethod
    def _retag(group: _Group, before: Message, after: Message) -> None:
        """Move ``after`` between the tag lists its change puts it in or takes it out of."""
        old = set(conversation.tags(before))
        new = set(conversation.tags(after))
        seq = after["seq"]
        for tag in old - new:
            seqs = group.tagged[tag]
            del seqs[bisect.bisect_left(seqs, seq)]
            if not seqs:
                del group.tagged[tag]
        for tag in new - old:
            bisect.insort(group.tagged.setdefault(tag, []), seq)

    @classmethod
    def _replace(cls, group: _Group, updated: Message) -> None:
        _untracked(updated)
        before = group.messages[updated["seq"] - 1]
        cls._retag(group, before, updated)
        if (before["content"], before["deleted"]) != (updated["content"], updated["deleted"]):
            group.words.update(
                updated["seq"], [] if updated["deleted"] else message_words(updated["content"], updated["attachments"])
            )
        group.messages[updated["seq"] - 1] = updated  # by_id and by_client_id hold its seq: unchanged

    @staticmethod
    def _unread(group: _Group, user_id: str, last_read: int) -> int:
        """Live messages of others above ``last_read``, in O(log n)."""
        total_above = group.live_count - sum(
            bisect.bisect_right(seqs, last_read) for seqs in group.live_seqs_by_sender.values()
        )
        own = group.live_seqs_by_sender.get(user_id, ())
        own_above = len(own) - bisect.bisect_right(own, last_read)
        return total_above - own_above


def _untracked(message: Message) -> None:
    """The message's arrays as tuples (see ``seed_message``), in place; ``_wire`` undoes it."""
    for key in ("mentions", "reactions", "attachments"):
        value = message[key]
        if type(value) is list:
            message[key] = tuple(value)


def _wire(message: Message) -> Message:
    """A stored message as callers get it: their own copy, with lists."""
    wire = message.copy()
    wire["mentions"], wire["reactions"], wire["attachments"] = (
        list(message["mentions"]), list(message["reactions"]), list(message["attachments"]))
    return wire
