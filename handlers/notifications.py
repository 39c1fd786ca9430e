"""Webhook events for people a message concerns who are not connected to its group.

``Notifier`` decides who gets an event and writes it to the outbox; the sender
of the webhooks (``server.webhooks``) delivers them. Each event's id is made
from what it is about (the kind, the message, the recipient), so writing it
twice, as a retried send does, writes it once: a send that was stored but not
acked (the node died, storage failed after the store) is retried by its client
with the same ``client_msg_id``, and that retry writes whatever was missing.

Kinds: ``chat.mention`` (to each mentioned user), ``chat.reply`` (to the
replied message's sender) and ``chat.answer_accepted`` (to the answer's
sender; the message is the question, whose ``answer_id`` names the answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from storage.base import GroupAccess, Message, iso_timestamp, now_ms
from storage.outbox import Outbox, OutboxEvent

from .interfaces import Presence

MENTION = "chat.mention"
REPLY = "chat.reply"
ANSWER_ACCEPTED = "chat.answer_accepted"


def event_id(kind: str, subject_id: str, user_id: str) -> str:
    """The ``webhook-id`` of ``kind`` about ``subject_id`` for ``user_id``: the
    same inputs give the same id on every node and every retry."""
    return f"{kind.removeprefix('chat.')}_{subject_id}_{user_id}"


def event_body(kind: str, user_id: str, group: GroupAccess, message: Message) -> str:
    """The JSON text POSTed for one recipient."""
    envelope: dict[str, Any] = {
        "type": kind,
        "timestamp": iso_timestamp(now_ms()),
        "data": {"user_id": user_id, "group_id": group.id, "group_name": group.name, "message": message},
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


class Notifier:
    """Writes one outbox event per recipient who has no connection in the group's room."""

    def __init__(self, outbox: Outbox, presence: Presence, *, written: Callable[[], None]) -> None:
        self.outbox = outbox
        self.presence = presence
        self._written = written  # wakes the local sender

    async def message_stored(self, message: Message, group: GroupAccess) -> None:
        """The events a stored message causes: a mention of anyone but its sender, and
        a reply to someone else's message."""
        sender = message["sender_id"]
        await self.notify(MENTION, message["id"], (u for u in message["mentions"] if u != sender), group, message)
        replied = (message.get("reply_to") or {}).get("sender_id")
        if replied is not None and replied != sender:
            await self.notify(REPLY, message["id"], (replied,), group, message)

    async def answer_accepted(self, question: Message, answer: Message, group: GroupAccess) -> None:
        """The answer's sender learns their message was accepted (unless they asked too)."""
        author = answer["sender_id"]
        if author is not None and author != question["sender_id"]:
            await self.notify(ANSWER_ACCEPTED, answer["id"], (author,), group, question)

    async def notify(
        self, kind: str, subject_id: str, recipients: Iterable[str], group: GroupAccess, message: Message
    ) -> None:
        """Write ``kind`` about ``subject_id`` for each of ``recipients`` not in the room now."""
        wanted = list(dict.fromkeys(recipients))
        if not wanted:
            return
        online = set(await self.presence.online(group.id))
        events = [
            OutboxEvent(event_id(kind, subject_id, user_id), kind, event_body(kind, user_id, group, message))
            for user_id in wanted
            if user_id not in online
        ]
        if events:
            await self.outbox.add(events)
            self._written()
