"""The chat's rules, independent of the transport that carries them.

Socket.IO events (``handlers.events``) and the HTTP routes (``server.http``)
both call ``ChatService``; it checks membership and ownership in the order the
protocol fixes and turns store answers into success payloads.
"""

from __future__ import annotations

from typing import Any

from storage.base import GroupAccess, Message, Store

from .errors import ChatError


class ChatService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def group_for(self, user_id: str, group_id: str) -> GroupAccess:
        """The group, if it exists and ``user_id`` is a member; else the refusal."""
        group = await self.store.get_group(group_id, user_id)
        if group is None:
            raise ChatError("group_not_found")
        if not group.is_member:
            raise ChatError("not_member")
        return group

    async def list_groups(self, user_id: str) -> dict[str, Any]:
        groups = await self.store.list_groups(user_id)
        return {"ok": True, "groups": [g.to_wire() for g in groups]}

    async def history(self, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
        await self.group_for(user_id, data["group_id"])
        messages, has_more = await self.store.get_messages(
            data["group_id"],
            limit=data["limit"],
            before_seq=data.get("before_seq"),
            after_seq=data.get("after_seq"),
        )
        return {"ok": True, "messages": messages, "has_more": has_more}

    async def join_page(self, group_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """What ``join_group`` returns about messages: latest page, or catch-up after ``since_seq``."""
        messages, has_more = await self.store.get_messages(
            group_id, limit=data["limit"], after_seq=data.get("since_seq")
        )
        latest = await self.store.latest_seq(group_id)
        return {"messages": messages, "has_more": has_more, "latest_seq": latest}

    async def own_message(self, user_id: str, group_id: str, message_id: str) -> Message:
        """A message of ``group_id`` that ``user_id`` sent (``message_not_found`` before ``forbidden``)."""
        message = await self.store.get_message(group_id, message_id)
        if message is None:
            raise ChatError("message_not_found")
        if message["sender_id"] != user_id:
            raise ChatError("forbidden", "Only the sender can change this message.")
        return message
