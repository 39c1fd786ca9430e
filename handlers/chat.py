"""The chat's rules, independent of the transport that carries them.

Socket.IO events (``handlers.events``) and the HTTP routes (``server.http``)
both call ``ChatService``; it checks membership and ownership in the order the
protocol fixes and turns store answers into success payloads.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from storage import conversation
from storage.attachments import AttachmentStore, MemoryAttachments, claim_key
from storage.base import AddAtOnce, GroupAccess, GroupSummary, Message, NewMessage, ReadState, StorageUnavailable, Store
from storage.keyed_lock import KeyedLock

from .errors import ChatError, invalid
from .fresh_reads import FreshReads
from .group_reads import GroupReads
from .notifications import Notifier

log = logging.getLogger(__name__)

Publish = Callable[[Message], Awaitable[None]]
SEARCHES_AT_ONCE = 4  # per process
# What an event that reads every group of the caller (a group list, a search of all their
# groups) costs of the rate limit for events other than sends: one token, plus one per
# GROUPS_PER_TOKEN groups the user had when last counted (a group's part takes about half the
# store reads of a join, which costs one), at most ``groups_cost_most`` (a tenth of the bucket,
# so that a member of hundreds of groups still has tokens left for everything else).
# Remembered for the most recent GROUP_COUNTS_KEPT users.
GROUPS_PER_TOKEN = 2
GROUP_COUNTS_KEPT = 50_000
SENDS_PER_WRITE = 64  # sends to one group written in one store call, at most


@dataclass(slots=True)
class _QueuedSend:
    fields: NewMessage
    publish: Publish
    done: asyncio.Future[tuple[Message, bool]]


def _settle(
    done: asyncio.Future[tuple[Message, bool]], answer: tuple[Message, bool] | None = None,
    *, error: BaseException | None = None,
) -> None:
    """Answer a queued send, unless its caller stopped waiting."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(answer)  # type: ignore[arg-type]


class ChatService:
    """Every chat rule: the events and routes call this, never the store."""

    def __init__(
        self, store: Store, *, notifier: Notifier | None = None, attachments: AttachmentStore | None = None
    ) -> None:
        self.store = store
        self.notifier = notifier  # webhooks; None when they are not configured
        self.attachments: AttachmentStore = attachments if attachments is not None else MemoryAttachments()
        # One writer per group in this process: rev (and seq) order is broadcast order.
        self._writer = KeyedLock()
        self._queued: dict[str, list[_QueuedSend]] = {}  # sends waiting for the group's writer
        self._writing: set[asyncio.Task[None]] = set()
        self._group_reads = GroupReads(store)  # membership checks that overlap share a read
        # A user's group list reads every group of theirs: calls that overlap (a flood from
        # many connections, a reconnect storm) share one read that began after they asked.
        self._group_lists: FreshReads[str, list[GroupSummary]] = FreshReads(
            lambda user_id: self.store.list_groups(user_id), "group list"
        )
        self._group_counts: OrderedDict[str, int] = OrderedDict()  # user -> their groups, when last counted
        self.groups_cost_most = 30  # create_app sets a tenth of the events bucket
        # Searches read more than other events: a few at a time, so a burst of them
        # cannot take every storage connection from sends and joins; and one user's at a
        # time, so that one user's burst holds one of those few, not all of them.
        self._searches = asyncio.Semaphore(SEARCHES_AT_ONCE)
        self._searchers = KeyedLock()

    async def user_name(self, user_id: str) -> str | None:
        """The user's display name; ``None`` when there is no ``users`` document."""
        user = await self.store.get_user(user_id)
        return user.name if user else None

    async def check_group_exists(self, user_id: str, group_id: str) -> None:
        """``group_not_found`` unless the group exists (membership not required)."""
        if await self._group_reads.get(group_id, user_id) is None:
            raise ChatError("group_not_found")

    async def group_for(self, user_id: str, group_id: str) -> GroupAccess:
        """The group, if it exists and ``user_id`` is a member; else the refusal."""
        group = await self._group_reads.get(group_id, user_id)
        if group is None:
            raise ChatError("group_not_found")
        if not group.is_member:
            raise ChatError("not_member")
        return group

    def groups_cost(self, user_id: str) -> int:
        """Rate-limit tokens an event that reads every group of ``user_id`` costs them."""
        return min(self.groups_cost_most, 1 + self._group_counts.get(user_id, 0) // GROUPS_PER_TOKEN)

    def _counted(self, user_id: str, groups: int) -> None:
        self._group_counts[user_id] = groups
        self._group_counts.move_to_end(user_id)
        if len(self._group_counts) > GROUP_COUNTS_KEPT:
            self._group_counts.popitem(last=False)

    async def list_groups(self, user_id: str) -> dict[str, Any]:
        groups = await self._group_lists.get(user_id)
        self._counted(user_id, len(groups))
        return {"ok": True, "groups": [g.to_wire() for g in groups]}

    async def history(self, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
        await self.group_for(user_id, data["group_id"])
        name = data.get("filter")
        messages, has_more = await self.store.get_messages(
            data["group_id"],
            limit=data["limit"],
            before_seq=data.get("before_seq"),
            after_seq=data.get("after_seq"),
            tag=None if name is None else conversation.filter_tag(name, user_id),
        )
        return {"ok": True, "messages": messages, "has_more": has_more}

    async def search(self, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """``search_messages``: in one group (a member's) or in all of the caller's groups."""
        if "group_id" in data:
            await self.group_for(user_id, data["group_id"])
            group_ids = [data["group_id"]]
        else:
            group_ids = sorted((await self.store.user_groups([user_id]))[user_id])
            self._counted(user_id, len(group_ids))
        async with self._searchers(user_id), self._searches:
            results, has_more = await self.store.search_messages(
                group_ids, data["query"], limit=data["limit"], before_seq=data.get("before_seq")
            )
        return {"ok": True, "results": results, "has_more": has_more}

    async def changes(self, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """``get_changes``: the messages changed after ``after_rev``, in ``rev`` order."""
        await self.group_for(user_id, data["group_id"])
        changes, has_more, latest_rev = await self.store.get_changes(
            data["group_id"], after_rev=data["after_rev"], limit=data["limit"]
        )
        return {"ok": True, "changes": changes, "has_more": has_more, "latest_rev": latest_rev}

    async def join_page(self, group_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """What ``join_group`` returns about messages: the latest page, the messages
        after ``since_seq``, or the changes after ``since_rev``."""
        if "since_rev" in data:
            changes, has_more, latest_rev = await self.store.get_changes(
                group_id, after_rev=data["since_rev"], limit=data["limit"]
            )
            latest_seq = await self.store.latest_seq(group_id)
            return {"changes": changes, "has_more": has_more, "latest_rev": latest_rev, "latest_seq": latest_seq}
        # The top first: whatever the page holds is at or below what is reported.
        latest_rev = await self.store.latest_rev(group_id)
        since_seq = data.get("since_seq")
        if since_seq is not None:
            messages, has_more = await self.store.get_messages(group_id, limit=data["limit"], after_seq=since_seq)
            latest_seq = await self.store.latest_seq(group_id)
        else:
            # The latest page ends at the top read for it, so the top is read once.
            latest_seq = await self.store.latest_seq(group_id)
            messages, has_more = await self.store.get_messages(group_id, limit=data["limit"], latest_seq=latest_seq)
        return {"messages": messages, "has_more": has_more, "latest_rev": latest_rev, "latest_seq": latest_seq}

    async def read_state(self, user_id: str, group_id: str, page: dict[str, Any] | None = None) -> ReadState:
        """The reader's marker and counts; ``page``: what ``join_page`` has just read
        (its top ``seq`` and ``rev`` are not read again)."""
        if page is None:
            return await self.store.read_state(group_id, user_id)
        return await self.store.read_state(group_id, user_id, latest_seq=page["latest_seq"],
                                           latest_rev=page["latest_rev"])

    async def send(
        self,
        user_id: str,
        group_id: str,
        *,
        name: str,
        content: str,
        client_msg_id: str | None,
        publish: Publish,
        mentions: Sequence[str] = (),
        reply_to: str | None = None,
        kind: str = conversation.PLAIN,
        attachments: Sequence[str] = (),
    ) -> tuple[Message, bool]:
        """Store a member's message and, unless it repeats an earlier send of the same
        ``client_msg_id``, ``publish`` it before the group's next message is stored.
        The webhook events it causes are written before this returns (the ack),
        for a repeated send too: the first one may have stopped short of them."""
        group = await self.group_for(user_id, group_id)
        if mentions:
            await self._check_mentions(group_id, mentions)
        quoted = None
        if reply_to is not None:
            replied = await self.store.get_message(group_id, reply_to)
            if replied is None:
                raise ChatError("message_not_found", "The message replied to is not in this group.")
            quoted = conversation.reply_snapshot(replied)
        claim, message_id, files = "", None, []
        if attachments:
            # The message's id is chosen first: the claimed files name it, so the orphan
            # sweep can tell a send that was stored (then stopped) from one that was not.
            claim, message_id = claim_key(user_id, client_msg_id or f"once:{uuid.uuid4()}"), str(ObjectId())
            files = await self._claim_files(user_id, group_id, attachments, claim, message_id)
        try:
            message, duplicate = await self._store_and_publish(
                group_id, publish, sender_id=user_id, sender_name=name, content=content,
                client_msg_id=client_msg_id, mentions=mentions, reply_to=quoted, kind=kind, attachments=files,
                message_id=message_id,
            )
        except BaseException:
            if attachments:  # not stored (as far as is known): the files may be sent again
                await self._files(self.attachments.release(attachments, claim), "release")
            raise
        if attachments and not duplicate:
            await self._files(self.attachments.attach(attachments), "attach")
        if self.notifier is not None:
            await self.notifier.message_stored(message, group)
        return message, duplicate

    async def _store_and_publish(self, group_id: str, publish: Publish, **fields: Any) -> tuple[Message, bool]:
        """Store a new message and, unless it repeats an earlier send, ``publish`` it
        before the group's next change. Sends to one group that arrive while one
        is being written wait for it and are then written together, in arrival
        order, in one store call (one ``insert_many`` on MongoDB). A send that finds
        the group idle is written at once by its own task, so nothing waits for
        company and a lone send costs no other task; on a store that writes without
        waiting, with no queue entry at all (``_write_alone``)."""
        queue = self._queued.get(group_id)
        if queue is None and not self._writer.held(group_id):
            at_once: AddAtOnce | None = getattr(self.store, "add_message_at_once", None)
            if at_once is not None:
                return await self._write_alone(group_id, at_once, publish, fields)  # type: ignore[arg-type]
        send = _QueuedSend(fields, publish, asyncio.get_running_loop().create_future())  # type: ignore[arg-type]
        if queue is not None:
            queue.append(send)
            return await send.done
        self._queued[group_id] = [send]
        await self._write_queued(group_id, lead=send)
        return send.done.result()

    async def _write_alone(
        self, group_id: str, at_once: AddAtOnce, publish: Publish, fields: NewMessage
    ) -> tuple[Message, bool]:
        """A send to an idle group on a store that writes without waiting: stored and
        published by its caller under the group's writer, as a batch of one would be.
        Sends to the group that arrive while it is published queue behind it."""
        self._queued[group_id] = []
        try:
            async with self._writer(group_id):
                message, duplicate = at_once(group_id, fields)
                if not duplicate:
                    await publish(message)
            return message, duplicate
        finally:
            self._hand_on(group_id)

    async def _write_queued(self, group_id: str, lead: _QueuedSend | None = None) -> None:
        """Store and publish the group's queued sends, a batch at a time. The task of
        the send that started the writing (``lead``) writes until its own send is
        answered, then leaves what queued meanwhile to a task of its own, so no
        sender waits for others' sends to be answered."""
        queue = self._queued[group_id]
        batch: list[_QueuedSend] = []
        try:
            while queue:
                if lead is not None and lead.done.done():
                    break
                batch = queue[:SENDS_PER_WRITE]
                del queue[:SENDS_PER_WRITE]
                await self._write_batch(group_id, batch)
                batch = []
        finally:
            for send in batch:  # interrupted (shutdown) with a write in flight: its outcome is unknown
                _settle(send.done, error=StorageUnavailable("the server stopped before this send was answered"))
            self._hand_on(group_id)

    def _hand_on(self, group_id: str) -> None:
        """The group's writing task is done: what queued meanwhile gets a task of its own."""
        if self._queued[group_id]:
            task = asyncio.create_task(self._write_queued(group_id), name=f"sends to {group_id}")
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)
        else:
            del self._queued[group_id]

    async def _write_batch(self, group_id: str, batch: list[_QueuedSend]) -> None:
        async with self._writer(group_id):
            answers: list[tuple[Message, bool] | BaseException]
            try:
                answers = [*await self.store.add_messages(group_id, [s.fields for s in batch])]
            except Exception as exc:  # every send of the batch gets it
                answers = [exc] * len(batch)
            for send, answer in zip(batch, answers, strict=True):
                if isinstance(answer, BaseException):
                    _settle(send.done, error=answer)
                    continue
                if not answer[1]:
                    try:
                        await send.publish(answer[0])
                    except Exception as exc:  # that send's caller gets it
                        _settle(send.done, error=exc)
                        continue
                _settle(send.done, answer)

    async def _claim_files(
        self, user_id: str, group_id: str, attachment_ids: Sequence[str], claim: str, message_id: str
    ) -> list[dict[str, Any]]:
        """The wire form of the caller's uploads to this group, marked as taken by this
        send; ``invalid_payload`` naming any that is not theirs here or is taken."""
        found = {a.id: a for a in [await self.attachments.get(i) for i in attachment_ids] if a is not None}
        foreign = [i for i in attachment_ids
                   if i not in found or found[i].group_id != group_id or found[i].uploader_id != user_id]
        if foreign:
            raise invalid({"attachments": [f"Not uploads of yours to this group: {', '.join(foreign)}."]},
                          "Attach files you uploaded to this group.")
        claimed = {a.id: a for a in await self.attachments.claim(attachment_ids, claim, message_id)}
        taken = [i for i in attachment_ids if i not in claimed]
        if taken:
            raise invalid({"attachments": [f"Already sent in another message: {', '.join(taken)}."]},
                          "A file can be sent in one message only; upload it again.")
        return [claimed[i].to_wire() for i in attachment_ids]

    async def _files(self, work: Awaitable[Any], what: str) -> None:
        """Bookkeeping of files after a send: a failure is logged, the orphan sweep settles it."""
        try:
            await work
        except StorageUnavailable as exc:
            log.warning("attachment %s after a send failed: %s", what, exc)

    async def _check_mentions(self, group_id: str, mentions: Sequence[str]) -> None:
        """``invalid_payload`` naming the mentioned users who are not members of the group."""
        outsiders = await self.store.non_members(group_id, mentions)
        if outsiders:
            raise invalid(
                {"mentions": [f"Not members of this group: {', '.join(outsiders)}."]},
                "Only members of the group can be mentioned.",
            )

    async def post_system(
        self,
        service: str,
        group_id: str,
        *,
        content: str,
        client_msg_id: str | None,
        mentions: list[str],
        publish: Publish,
    ) -> tuple[Message, bool]:
        """Store and ``publish`` a message of the platform's (kind ``system``, no sender
        id, ``service`` as its sender's name) the way ``send`` does a member's: the
        same writer queue, so it takes its place in the group's ``seq`` and ``rev``
        order among live sends. ``mentions`` must be members of the group."""
        group = await self.store.get_group(group_id, "")  # no user: only whether it exists, and its name
        if group is None:
            raise ChatError("group_not_found")
        if mentions:
            await self._check_mentions(group_id, mentions)
        message, duplicate = await self._store_and_publish(
            group_id, publish, sender_id=None, sender_name=service, content=content,
            client_msg_id=client_msg_id, kind="system", mentions=mentions,
        )
        if duplicate and (message["kind"] != "system" or message["sender_name"] != service):
            # The key space is the group's, shared by the platform's services.
            raise invalid({"client_msg_id": ["Already used in this group by another sender."]})
        if self.notifier is not None:
            await self.notifier.message_stored(message, group)
        return message, duplicate

    async def group_summary(self, user_id: str, group_id: str) -> dict[str, Any]:
        """What ``list_groups`` tells ``user_id`` about one of their groups."""
        group = await self.group_for(user_id, group_id)
        latest_seq = await self.store.latest_seq(group_id)
        latest_rev = await self.store.latest_rev(group_id)
        read = await self.store.read_state(group_id, user_id, latest_seq=latest_seq, latest_rev=latest_rev)
        open_questions = await self.store.open_questions(group_id, latest_rev=latest_rev)
        return GroupSummary(
            group.id, group.name, latest_seq, read.unread_count, latest_rev, read.mention_count, open_questions
        ).to_wire()

    async def group_members(self, group_id: str) -> frozenset[str] | None:
        """The group's members now; ``None`` when it does not exist."""
        return await self.store.group_members(group_id)

    async def user_groups(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        """The groups each user is a member of now."""
        return await self.store.user_groups(user_ids)

    async def mark_read(self, user_id: str, group_id: str, seq: int) -> ReadState:
        await self.group_for(user_id, group_id)
        return await self.store.mark_read(group_id, user_id, seq)

    async def edit(
        self, user_id: str, group_id: str, message_id: str, content: str, *, publish: Publish
    ) -> Message:
        """The sender's edit of a live message, ``publish``-ed before the group's next change."""
        await self.group_for(user_id, group_id)
        current = await self.own_message(user_id, group_id, message_id)
        if current["deleted"]:
            raise ChatError("message_not_found", "This message was deleted.")
        async with self._writer(group_id):
            updated = await self.store.edit_message(group_id, message_id, user_id, content)
            if updated is None:  # deleted meanwhile
                raise ChatError("message_not_found", "This message was deleted.")
            await publish(updated)
        return updated

    async def delete(
        self, user_id: str, group_id: str, message_id: str, *, publish: Publish, moderator: bool = False
    ) -> Message | None:
        """The sender's delete, or a moderator's of anyone's message (recorded in
        ``deleted_by``): the message as it is now. Only the call that deleted it
        ``publish``-es it (not one that found it deleted already, by this or
        another connection)."""
        await self.group_for(user_id, group_id)
        current = await self.own_message(user_id, group_id, message_id, moderator=moderator)
        if current["deleted"]:
            return current
        others = current["sender_id"] != user_id
        async with self._writer(group_id):
            deleted = await self.store.delete_message(
                group_id, message_id, None if others else user_id, deleted_by=user_id if others else None
            )
            if deleted is not None:
                await publish(deleted)
        if deleted is not None:
            if current["attachments"]:  # the files go with the message
                await self._files(self.attachments.delete([a["id"] for a in current["attachments"]]), "delete")
            return deleted
        return await self.store.get_message(group_id, message_id)

    async def own_message(
        self, user_id: str, group_id: str, message_id: str, *, moderator: bool = False
    ) -> Message:
        """A message of ``group_id`` that ``user_id`` sent, or any for a ``moderator``
        (``message_not_found`` before ``forbidden``)."""
        message = await self.store.get_message(group_id, message_id)
        if message is None:
            raise ChatError("message_not_found")
        if message["sender_id"] != user_id and not moderator:
            raise ChatError("forbidden", "Only the sender can change this message.")
        return message

    # -- conversation: reactions, pins, answers --

    async def react(
        self, user_id: str, group_id: str, message_id: str, emoji: str, on: bool, *, publish: Publish
    ) -> Message:
        """Add or take back ``user_id``'s reaction; ``publish``-ed when it changed anything."""
        await self.group_for(user_id, group_id)
        try:
            return await self._change(
                group_id, publish, lambda: self.store.react(group_id, message_id, user_id, emoji, on)
            )
        except conversation.TooManyEmoji:
            raise invalid({"emoji": [f"A message takes at most {conversation.MAX_EMOJI_PER_MESSAGE} "
                                     "different emoji."]}) from None

    async def pin(self, user_id: str, group_id: str, message_id: str, pinned: bool, *, publish: Publish) -> Message:
        """Any member pins or unpins a live message."""
        await self.group_for(user_id, group_id)
        try:
            return await self._change(
                group_id, publish, lambda: self.store.pin(group_id, message_id, user_id if pinned else None)
            )
        except conversation.TooManyPins:
            raise invalid({"pinned": [f"A group has at most {conversation.MAX_PINNED_PER_GROUP} "
                                      "pinned messages; unpin one first."]}) from None

    async def accept_answer(
        self, user_id: str, group_id: str, question_id: str, answer_id: str | None,
        *, publish: Publish, moderator: bool = False,
    ) -> Message:
        """The asker (or a moderator) accepts a later live message of the group as the
        answer, or takes the acceptance back: the question as it is now."""
        group = await self.group_for(user_id, group_id)
        question = await self.store.get_message(group_id, question_id)
        if question is None or question["deleted"]:
            raise ChatError("message_not_found", "The question is not in this group.")
        if question["kind"] != conversation.QUESTION:
            raise invalid({"question_id": ["This message is not a question."]})
        answer = None
        if answer_id is not None:
            answer = await self.store.get_message(group_id, answer_id)
            if answer is None or answer["deleted"]:
                raise ChatError("message_not_found", "The answer is not in this group.")
            if answer["seq"] <= question["seq"]:
                raise invalid({"answer_id": ["The answer must come after the question."]})
        if question["sender_id"] != user_id and not moderator:
            raise ChatError("forbidden", "Only the person who asked (or a moderator) can accept an answer.")
        changed = False

        async def publish_change(message: Message) -> None:
            nonlocal changed
            changed = True
            await publish(message)

        updated = await self._change(
            group_id, publish_change, lambda: self.store.set_answer(group_id, question_id, answer_id)
        )
        if changed and answer is not None and self.notifier is not None:
            await self.notifier.answer_accepted(updated, answer, group)
        return updated

    async def _change(
        self, group_id: str, publish: Publish, change: Callable[[], Awaitable[tuple[Message, bool] | None]]
    ) -> Message:
        """Run a store change under the group's writer lock; ``publish`` it if it changed
        anything; ``message_not_found`` when there was no such live message."""
        async with self._writer(group_id):
            result = await change()
            if result is None:
                raise ChatError("message_not_found", "There is no such message (or it was deleted).")
            message, changed = result
            if changed:
                await publish(message)
        return message
