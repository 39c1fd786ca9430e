"""Socket.IO events: the handshake, one handler per client event, and the error boundary.

Every client event answers its ack exactly once with the documented envelope:
the boundary (``_boundary``) turns refusals into ``{"ok": false, ...}``, logs
anything unexpected with its traceback and answers ``internal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import socketio
from marshmallow import ValidationError

from realtime.codec import UNDECODABLE_EVENT
from storage.base import Message, StorageUnavailable

from . import schemas
from .auth import TokenVerifier, token_from_handshake
from .chat import ChatService
from .errors import ChatError, invalid
from .interfaces import Limiter, Observer, Presence
from .refusal_log import RefusalLog
from .typing_throttle import TypingThrottle

log = logging.getLogger(__name__)

NAMESPACE = "/"


@dataclass
class Connection:
    sid: str
    user_id: str
    name: str | None  # None until the users document could be read
    groups: set[str] = field(default_factory=set)


Handler = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]


class ChatEvents:
    """Binds the chat to one ``socketio.AsyncServer``."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        chat: ChatService,
        verifier: TokenVerifier,
        *,
        presence: Presence,
        limiter: Limiter,
        observer: Observer,
    ) -> None:
        self.sio = sio
        self.chat = chat
        self.store = chat.store
        self.verifier = verifier
        self.presence = presence
        self.limiter = limiter
        self.observer = observer
        self.typing = TypingThrottle()
        self.refusals = RefusalLog(log)  # repeatable refusals: a line per user and code per interval
        self.connections: dict[str, Connection] = {}
        self._group_locks: dict[str, list] = {}
        self._handling = 0  # events being handled now
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    def register(self) -> None:
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        for event, handler in {
            "list_groups": self.list_groups,
            "join_group": self.join_group,
            "leave_group": self.leave_group,
            "send_message": self.send_message,
            "get_history": self.get_history,
            "typing": self.typing_event,
            "mark_read": self.mark_read,
            "edit_message": self.edit_message,
            "delete_message": self.delete_message,
        }.items():
            self.sio.on(event, self._boundary(event, handler))
        self.sio.on("*", self.unknown_event)

    # -- connection lifecycle --

    async def connect(self, sid: str, *args: Any) -> Any:
        """The handshake: python-socketio calls it with ``(sid, environ, auth)``."""
        if sid in self.connections or not args or not isinstance(args[0], Mapping):
            # A client-sent event named "connect"; the real handshake is done.
            return invalid({"_event": ["Reserved event name."]}).envelope()
        environ, auth = args[0], args[1] if len(args) > 1 else None
        try:
            user_id = self.verifier.verify(token_from_handshake(auth, environ))
        except ChatError as exc:
            log.warning("handshake refused sid=%s code=%s reason=%s", sid, exc.code, exc.message)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code, "message": exc.message}
            ) from None
        conn = Connection(sid, user_id, None)
        await self._resolve_name(conn)
        self.connections[sid] = conn
        self.observer.connections(+1)
        log.debug("connected sid=%s user=%s", sid, user_id)
        return True

    async def disconnect(self, sid: str, *args: Any) -> Any:
        if self.sio.manager.is_connected(sid, NAMESPACE):
            # A client-sent event named "disconnect", not a real one.
            return invalid({"_event": ["Reserved event name."]}).envelope()
        conn = self.connections.pop(sid, None)
        if conn is None:
            return
        self.observer.connections(-1)
        for group_id in list(conn.groups):
            await self._leave_room(conn, group_id)

    async def unknown_event(self, *args: Any) -> dict[str, Any]:
        """The catch-all: ``(event, sid, *payload)``, or ``(sid, *payload)`` for an event named "*"."""
        event = args[0] if args else None
        if event == UNDECODABLE_EVENT:
            sid = args[1] if len(args) > 1 else None
            self.refusals.refused(self._user_of(sid), "invalid_payload", "undecodable event", sid=sid)
            self.observer.event("undecodable", "invalid_payload", 0.0)
            return invalid({"_payload": ["The payload could not be decoded (too deep, too large a number, "
                                         "or attachments that do not match)."]}).envelope()
        sid = args[1] if len(args) > 1 else None
        self.refusals.refused(self._user_of(sid), "invalid_payload", f"unknown event {str(event)[:64]!r}", sid=sid)
        self.observer.event("unknown", "invalid_payload", 0.0)
        return invalid({"_event": [f"Unknown event {str(event)[:64]!r}."]}).envelope()

    def _user_of(self, sid: Any) -> str | None:
        conn = self.connections.get(sid) if isinstance(sid, str) else None
        return conn.user_id if conn else None

    async def _resolve_name(self, conn: Connection) -> str:
        if conn.name is None:
            try:
                user = await self.store.get_user(conn.user_id)
            except StorageUnavailable:
                return conn.user_id  # try again on the next event
            conn.name = user.name if user else conn.user_id
        return conn.name

    # -- the error boundary --

    def _boundary(self, event: str, handler: Handler):
        async def run(sid: str, *args: Any) -> dict[str, Any]:
            started = time.perf_counter()
            conn = self.connections.get(sid)
            group_id = None
            self._handling += 1
            self._idle.clear()
            try:
                if self.closing:
                    raise ChatError("storage_unavailable", "The server is restarting; send again after reconnecting.")
                if conn is None:
                    raise ChatError("unauthorized", "The connection is not signed in.")
                retry_after = await self.limiter.check(conn.user_id, event)
                if retry_after is not None:
                    raise ChatError("rate_limited", retry_after_ms=retry_after)
                try:
                    data = schemas.load(event, args)
                except ValidationError as exc:
                    raise invalid(exc.normalized_messages()) from None
                group_id = data.get("group_id")
                if data.get("sender_id", conn.user_id) != conn.user_id:
                    raise ChatError("forbidden", "sender_id must be your own user id.")
                result = await handler(conn, data)
                outcome = "ok"
            except ChatError as exc:
                result, outcome = exc.envelope(), exc.code
            except StorageUnavailable as exc:
                log.error("storage unavailable during %s sid=%s: %s", event, sid, exc)
                result, outcome = ChatError("storage_unavailable").envelope(), "storage_unavailable"
            except Exception:
                log.exception("internal error in %s sid=%s", event, sid)
                result, outcome = ChatError("internal").envelope(), "internal"
            finally:
                self._handling -= 1
                if not self._handling:
                    self._idle.set()
            if outcome != "ok" and outcome != "storage_unavailable":
                self.refusals.refused(conn.user_id if conn else None, outcome, event, sid=sid, group=group_id)
            self.observer.event(event, outcome, time.perf_counter() - started)
            return result

        run.__name__ = event
        return run

    # -- events --

    async def list_groups(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.list_groups(conn.user_id)

    async def join_group(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        group = await self.chat.group_for(conn.user_id, group_id)
        # Enter the room before reading, so nothing sent in between is missed
        # (it may arrive twice: clients de-duplicate by seq).
        first_time = group_id not in conn.groups
        if first_time:
            await self.sio.enter_room(conn.sid, group_id)
            conn.groups.add(group_id)
            self.observer.rooms(+1)
        try:
            page = await self.chat.join_page(group_id, data)
            read = await self.store.read_state(group_id, conn.user_id)
        except BaseException:
            if first_time:
                await self._leave_room(conn, group_id, announce=False)
            raise
        if first_time and await self.presence.join(group_id, conn.user_id, conn.sid):
            await self._emit_presence(conn, group_id, online=True)
        online = await self.presence.online(group_id)
        return {
            "ok": True,
            "group": {"id": group.id, "name": group.name},
            **page,
            "last_read_seq": read.last_read_seq,
            "unread_count": read.unread_count,
            "online": online,
        }

    async def leave_group(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        if group_id not in conn.groups:
            if await self.store.get_group(group_id, conn.user_id) is None:
                raise ChatError("group_not_found")
            return {"ok": True}
        await self._leave_room(conn, group_id)
        return {"ok": True}

    async def send_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        await self.chat.group_for(conn.user_id, group_id)
        name = await self._resolve_name(conn)
        received = time.perf_counter()
        # One writer per group in this process: seq order is broadcast order.
        async with self._group_lock(group_id):
            message, duplicate = await self.store.add_message(
                group_id,
                sender_id=conn.user_id,
                sender_name=name,
                content=data["content"],
                client_msg_id=data.get("client_msg_id"),
            )
            stored = time.perf_counter()
            self.observer.send_stored(stored - received)
            if not duplicate:
                await self._broadcast("message", message, group_id, received=received)
        return {"ok": True, "message": message, "duplicate": duplicate}

    async def get_history(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.history(conn.user_id, data)

    async def typing_event(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id, is_typing = data["group_id"], data["is_typing"]
        await self.chat.group_for(conn.user_id, group_id)
        if self.typing.allow(conn.user_id, group_id, is_typing):
            payload = {
                "group_id": group_id,
                "user_id": conn.user_id,
                "name": await self._resolve_name(conn),
                "is_typing": is_typing,
            }
            await self.sio.emit("typing", payload, room=group_id, skip_sid=conn.sid)
        return {"ok": True}

    async def mark_read(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        await self.chat.group_for(conn.user_id, group_id)
        state = await self.store.mark_read(group_id, conn.user_id, data["seq"])
        return {"ok": True, "last_read_seq": state.last_read_seq, "unread_count": state.unread_count}

    async def edit_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id, message_id = data["group_id"], data["message_id"]
        await self.chat.group_for(conn.user_id, group_id)
        current = await self.chat.own_message(conn.user_id, group_id, message_id)
        if current["deleted"]:
            raise ChatError("message_not_found", "This message was deleted.")
        updated = await self.store.edit_message(group_id, message_id, conn.user_id, data["content"])
        if updated is None:  # deleted meanwhile
            raise ChatError("message_not_found", "This message was deleted.")
        await self._broadcast("message_updated", updated, group_id)
        return {"ok": True, "message": updated}

    async def delete_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id, message_id = data["group_id"], data["message_id"]
        await self.chat.group_for(conn.user_id, group_id)
        current = await self.chat.own_message(conn.user_id, group_id, message_id)
        if current["deleted"]:
            return {"ok": True, "message": current}
        deleted = await self.store.delete_message(group_id, message_id, conn.user_id)
        if deleted is None:  # deleted meanwhile by another connection
            current = await self.store.get_message(group_id, message_id)
            return {"ok": True, "message": current}
        await self._broadcast("message_deleted", deleted, group_id)
        return {"ok": True, "message": deleted}

    # -- helpers --

    def _group_lock(self, group_id: str) -> "_GroupLock":
        return _GroupLock(self._group_locks, group_id)

    async def _broadcast(self, event: str, message: Message, group_id: str, received: float | None = None) -> None:
        """Emit to the room. The fan-out hands the frame to every local connection
        before it returns, so emits made in seq order are delivered in seq order."""
        await self.sio.emit(event, message, room=group_id)
        if received is not None:
            self.observer.send_broadcast(time.perf_counter() - received)

    async def quiesce(self, timeout: float) -> bool:
        """Refuse new events, then wait up to ``timeout`` for the ones in flight;
        ``True`` when everything finished."""
        self.closing = True

        async def settle() -> None:
            while self._handling:
                await self._idle.wait()

        try:
            await asyncio.wait_for(settle(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("shutdown: %d events still in flight after %.1f s", self._handling, timeout)
            return False

    async def _leave_room(self, conn: Connection, group_id: str, *, announce: bool = True) -> None:
        if group_id not in conn.groups:
            return
        conn.groups.discard(group_id)
        self.observer.rooms(-1)
        if self.sio.manager.is_connected(conn.sid, NAMESPACE):
            await self.sio.leave_room(conn.sid, group_id)
        last = await self.presence.leave(group_id, conn.user_id, conn.sid)
        if last and announce:
            await self._emit_presence(conn, group_id, online=False)

    async def announce_offline(self, group_id: str, user_id: str) -> None:
        """Tell a room that a user of a dead node is gone (found by the presence sweep)."""
        name = user_id
        try:
            user = await self.store.get_user(user_id)
            name = user.name if user else user_id
        except StorageUnavailable:
            pass
        payload = {"group_id": group_id, "user_id": user_id, "name": name, "online": False}
        await self.sio.emit("presence", payload, room=group_id)

    async def _emit_presence(self, conn: Connection, group_id: str, *, online: bool) -> None:
        payload = {
            "group_id": group_id,
            "user_id": conn.user_id,
            "name": conn.name or conn.user_id,
            "online": online,
        }
        await self.sio.emit("presence", payload, room=group_id, skip_sid=conn.sid)


class _GroupLock:
    """A per-group ``asyncio.Lock``, dropped from the table once nobody holds or awaits it."""

    __slots__ = ("_table", "_key", "_entry")

    def __init__(self, table: dict[str, list], key: str) -> None:
        self._table, self._key = table, key
        self._entry = table.setdefault(key, [asyncio.Lock(), 0])

    async def __aenter__(self) -> None:
        self._entry[1] += 1
        try:
            await self._entry[0].acquire()
        except BaseException:
            self._release_ref()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._entry[0].release()
        self._release_ref()

    def _release_ref(self) -> None:
        self._entry[1] -= 1
        if self._entry[1] == 0:
            del self._table[self._key]
