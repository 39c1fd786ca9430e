"""The conversation events: reactions, pins and accepted answers.

``ChatEvents`` registers these handlers behind its error boundary like its own
(the same validation, rate limit and refusal order); each answers the message
as it is after the call, and its change (if any) reaches the group's room as
``message_updated`` through ``updated(group_id)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .chat import ChatService, Publish
from .connections import Connection

Handler = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]


class ConversationEvents:
    def __init__(self, chat: ChatService, updated: Callable[[str], Publish]) -> None:
        self.chat = chat
        self.updated = updated

    def handlers(self) -> dict[str, Handler]:
        return {"react": self.react, "pin_message": self.pin_message, "accept_answer": self.accept_answer}

    async def react(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        message = await self.chat.react(
            conn.user_id, group_id, data["message_id"], data["emoji"], data["on"], publish=self.updated(group_id)
        )
        return {"ok": True, "message": message}

    async def pin_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        message = await self.chat.pin(
            conn.user_id, group_id, data["message_id"], data["pinned"], publish=self.updated(group_id)
        )
        return {"ok": True, "message": message}

    async def accept_answer(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        question = await self.chat.accept_answer(
            conn.user_id, group_id, data["question_id"], data["answer_id"],
            publish=self.updated(group_id), moderator=conn.moderator,
        )
        return {"ok": True, "message": question}
