"""Socket.IO events: the handshake, one handler per client event, and the error boundary.

Every client event answers its ack exactly once with the documented envelope:
the boundary (``_boundary``) turns refusals into ``{"ok": false, ...}``, logs
anything unexpected with its traceback and answers ``internal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import socketio
from marshmallow import ValidationError

from realtime.codec import UNDECODABLE_EVENT
from storage.base import Message, StorageUnavailable

from . import schemas
from .auth import TokenVerifier, token_from_handshake
from .chat import ChatService, Publish
from .connections import Connection, ConnectionSlots, HandshakeRefused, refusal
from .conversation_events import ConversationEvents
from .errors import ChatError, invalid
from .event_slots import EventSlots
from .interfaces import Limiter, Observer, Presence, TakeNow
from .membership import MembershipTracker
from .refusal_log import RefusalLog
from .session_expiry import SessionExpiry, expires_at_text
from .typing_throttle import TypingThrottle

log = logging.getLogger(__name__)

NAMESPACE = "/"
# Events of one user handled at once on a node; more wait their turn (handlers.event_slots).
EVENTS_AT_ONCE_PER_USER = 16
# Never wait for a slot: they read no storage, and a refresh must not be held past the token's end.
UNQUEUED_EVENTS = frozenset({"refresh_token", "typing", "leave_group"})


Handler = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]  # what _boundary wraps


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
        max_connections_per_user: int = 20,
        on_joined: Callable[[str, int], None] | None = None,
    ) -> None:
        self.sio = sio
        self.chat = chat
        self.verifier = verifier
        self.presence = presence
        self.limiter = limiter
        self._take_now: TakeNow | None = getattr(limiter, "take", None)
        self.observer = observer
        # Told (group, latest_rev) after a connection's first join: where the
        # cross-node order of the group's changes starts on this node.
        self.on_joined = on_joined
        self.typing = TypingThrottle()
        self.refusals = RefusalLog(log)  # repeatable refusals: a line per user and code per interval
        self.connections: dict[str, Connection] = {}
        self.expiry = SessionExpiry(sio, self.connections)
        self.slots = ConnectionSlots(max_connections_per_user)
        self.event_slots = EventSlots(EVENTS_AT_ONCE_PER_USER)
        self._handling = 0  # events being handled now
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False
        self.membership = MembershipTracker(self)

    def register(self) -> None:
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        for event, handler in {
            "list_groups": self.list_groups,
            "join_group": self.join_group,
            "leave_group": self.leave_group,
            "send_message": self.send_message,
            "get_history": self.get_history,
            "get_changes": self.get_changes,
            "typing": self.typing_event,
            "mark_read": self.mark_read,
            "edit_message": self.edit_message,
            "delete_message": self.delete_message,
            "refresh_token": self.refresh_token,
            "search_messages": self.search_messages,
            **ConversationEvents(self.chat, self._updated).handlers(),
        }.items():
            self.sio.on(event, self._boundary(event, handler))
        self.sio.on("*", self.unknown_event)

    # -- connection lifecycle --

    async def connect(self, sid: str, *args: Any) -> Any:
        """The handshake: python-socketio calls it with ``(sid, environ, auth)``.

        It answers ``True`` or raises ``ConnectionRefusedError`` and nothing
        else: python-socketio leaves a handshake whose handler raised anything
        else pending for good (never answered, never cleaned up)."""
        if sid in self.connections or not args or not isinstance(args[0], Mapping):
            # A client-sent event named "connect"; the real handshake is done.
            return invalid({"_event": ["Reserved event name."]}).envelope()
        environ, auth = args[0], args[1] if len(args) > 1 else None
        user_id = slot = None
        try:
            identity = self.verifier.identify(token_from_handshake(auth, environ))
            user_id = identity.user_id
            self.slots.take(user_id)
            slot = user_id
            conn = Connection(sid, user_id, None, expires_at=identity.expires_at, moderator=identity.moderator)
            await self._resolve_name(conn)
            if self.sio.get_environ(sid) is None:
                # The transport closed while the name was read: python-socketio
                # does not call the disconnect handler of a pending handshake.
                raise ChatError("unauthorized", "The connection closed during the handshake.")
        except (ChatError, HandshakeRefused) as exc:
            self.slots.give_back(slot)
            self.refusals.refused(user_id, exc.code, "handshake", sid=sid, reason=exc.message)
            raise refusal(exc.code, exc.message) from None
        except Exception:
            self.slots.give_back(slot)
            log.exception("handshake failed sid=%s", sid)
            raise refusal("internal", ChatError("internal").message) from None
        self.connections[sid] = conn
        self.membership.connected(conn)
        self.observer.connections(+1)
        await self.expiry.start(conn)
        log.debug("connected sid=%s user=%s", sid, user_id)
        return True

    async def disconnect(self, sid: str, *args: Any) -> Any:
        if self.sio.manager.is_connected(sid, NAMESPACE):
            # A client-sent event named "disconnect", not a real one.
            return invalid({"_event": ["Reserved event name."]}).envelope()
        conn = self.connections.pop(sid, None)
        if conn is None:
            return
        conn.closed = True
        self.expiry.forget(conn)
        self.membership.disconnected(conn)
        self.slots.give_back(conn.user_id)
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
                name = await self.chat.user_name(conn.user_id)
            except StorageUnavailable:
                return conn.user_id  # try again on the next event
            conn.name = name or conn.user_id
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
                if conn.expires_at <= time.time():  # ended by its token; closing at the wheel's next turn
                    raise ChatError("unauthorized", "The session has ended: its token expired.")
                cost = self._cost(event, conn, args)
                take = self._take_now
                retry_after = (take(conn.user_id, event, cost) if take is not None
                               else await self.limiter.check(conn.user_id, event, cost))
                if retry_after is not None:
                    raise ChatError("rate_limited", retry_after_ms=retry_after)
                try:
                    data = schemas.load(event, args)
                except ValidationError as exc:
                    raise invalid(exc.normalized_messages()) from None
                group_id = data.get("group_id")
                if data.get("sender_id", conn.user_id) != conn.user_id:
                    raise ChatError("forbidden", "sender_id must be your own user id.")
                if event in UNQUEUED_EVENTS:
                    result = await handler(conn, data)
                else:
                    user_id = conn.user_id
                    if not self.event_slots.take_now(user_id):
                        await self.event_slots.take(user_id)
                    try:
                        if conn.closed:  # it closed while this waited: nobody is there for the answer
                            raise ChatError("unauthorized", "The connection closed before this event was handled.")
                        result = await handler(conn, data)
                    finally:
                        self.event_slots.give_back(user_id)
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

    def _cost(self, event: str, conn: Connection, args: tuple[Any, ...]) -> int:
        """Rate-limit tokens an event costs, told before its payload is read: a group list and a
        search of all the caller's groups read each group, and cost by how many there are."""
        if event == "list_groups" or (
            event == "search_messages" and not (args and isinstance(args[0], dict) and args[0].get("group_id") is not None)
        ):  # (a null group_id is no group_id: a search of all groups)
            return self.chat.groups_cost(conn.user_id)
        return 1

    # -- events --

    async def list_groups(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.list_groups(conn.user_id)

    async def join_group(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        epoch = self.membership.epoch
        group = await self.chat.group_for(conn.user_id, group_id)
        # Enter the room before reading, so nothing sent in between is missed
        # (it may arrive twice: clients de-duplicate by seq).
        first_time = group_id not in conn.groups
        if first_time:
            _check_open(conn)  # a closed connection's sid must not enter a room again
            await self.sio.enter_room(conn.sid, group_id)
            conn.groups.add(group_id)
            self.observer.rooms(+1)
        try:
            if first_time and self.membership.epoch != epoch:
                # Memberships were re-read while this join checked its own: a removal
                # applied then could not see this connection in the room. Check again.
                await self.chat.group_for(conn.user_id, group_id)
            page = await self.chat.join_page(group_id, data)
            if first_time and self.on_joined is not None:
                self.on_joined(group_id, page["latest_rev"])
            read = await self.chat.read_state(conn.user_id, group_id, page)
            open_questions = await self.chat.store.open_questions(group_id, latest_rev=page["latest_rev"])
            # The connection may have closed, or left the group, while this join
            # read the store or recorded presence: that cleanup ran before the
            # record existed and could not undo it, so this join does.
            if first_time and _in_room(conn, group_id):
                first = await self.presence.join(group_id, conn.user_id, conn.sid)
                if not _in_room(conn, group_id):
                    await self._forget_presence(conn, group_id)
                elif first:
                    await self._emit_presence(conn, group_id, online=True)
            _check_open(conn)
            online = await self.presence.online(group_id)
        except BaseException:
            if first_time:
                await self._undo_join(conn, group_id)
            raise
        return {
            "ok": True,
            "group": {"id": group.id, "name": group.name},
            **page,
            "last_read_seq": read.last_read_seq,
            "unread_count": read.unread_count,
            "mention_count": read.mention_count,
            "open_questions": open_questions,
            "online": online,
        }

    async def _undo_join(self, conn: Connection, group_id: str) -> None:
        """Take back a join that failed or outlived its connection: the room, the
        presence record and, if that was the user's last one there, announce them offline."""
        if group_id in conn.groups:
            await self._leave_room(conn, group_id)
        else:  # the disconnect handler or a leave_group already left the room
            await self._forget_presence(conn, group_id)

    async def _forget_presence(self, conn: Connection, group_id: str) -> None:
        """Drop this connection's presence record; announce the user offline if it was their last."""
        if await self.presence.leave(group_id, conn.user_id, conn.sid):
            await self._emit_presence(conn, group_id, online=False)

    async def leave_group(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        if group_id not in conn.groups:
            await self.chat.check_group_exists(conn.user_id, group_id)
            return {"ok": True}
        await self._leave_room(conn, group_id)
        return {"ok": True}

    async def send_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        name = conn.name if conn.name is not None else await self._resolve_name(conn)
        received = time.perf_counter()

        async def publish(message: Message) -> None:
            self.observer.send_stored(time.perf_counter() - received)
            await self.sio.emit("message", message, room=group_id)  # as ``_updated``'s publish
            self.observer.send_broadcast(time.perf_counter() - received)

        message, duplicate = await self.chat.send(
            conn.user_id, group_id, name=name, content=data["content"],
            client_msg_id=data.get("client_msg_id"), publish=publish, mentions=data.get("mentions", ()),
            reply_to=data.get("reply_to"), kind=data.get("kind", "message"), attachments=data.get("attachments", ()),
        )
        return {"ok": True, "message": message, "duplicate": duplicate}

    async def get_history(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.history(conn.user_id, data)

    async def search_messages(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.search(conn.user_id, data)

    async def get_changes(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        return await self.chat.changes(conn.user_id, data)

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
        state = await self.chat.mark_read(conn.user_id, data["group_id"], data["seq"])
        return {"ok": True, "last_read_seq": state.last_read_seq, "unread_count": state.unread_count,
                "mention_count": state.mention_count}

    async def edit_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        updated = await self.chat.edit(
            conn.user_id, group_id, data["message_id"], data["content"], publish=self._updated(group_id)
        )
        return {"ok": True, "message": updated}

    async def delete_message(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        group_id = data["group_id"]
        message = await self.chat.delete(
            conn.user_id, group_id, data["message_id"],
            publish=self._updated(group_id, "message_deleted"), moderator=conn.moderator,
        )
        return {"ok": True, "message": message}

    async def refresh_token(self, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
        """A new token for the same user moves the connection's end to its ``exp``."""
        identity = self.verifier.identify(data["token"])
        if identity.user_id != conn.user_id:
            raise ChatError("forbidden", "The token is for another user; sign in again to switch users.")
        _check_open(conn)
        conn.moderator = identity.moderator
        self.expiry.extend(conn, identity.expires_at)
        return {"ok": True, "expires_at": expires_at_text(conn.expires_at)}

    # -- helpers --

    def _updated(self, group_id: str, event: str = "message_updated") -> Publish:
        """What broadcasts a change of one of the group's messages to its room. The
        fan-out hands the frame to every local connection before the emit returns,
        so changes published in rev order (under the group's writer) are delivered
        in rev order; a new message's publish (``send_message``) emits the same way."""

        async def publish(message: Message) -> None:
            await self.sio.emit(event, message, room=group_id)

        return publish

    async def quiesce(self, grace_s: float) -> bool:
        """Refuse new events, then wait up to ``grace_s`` seconds for the ones in flight;
        ``True`` when everything finished."""
        self.closing = True

        async def settle() -> None:
            while self._handling:
                await self._idle.wait()

        try:
            await asyncio.wait_for(settle(), grace_s)
            return True
        except TimeoutError:
            log.warning("shutdown: %d events still in flight after %.1f s", self._handling, grace_s)
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

    async def evict(self, conn: Connection, group_id: str) -> None:
        """The user is no longer a member: out of the room first (nothing sent to the
        group reaches this connection after the news), then ``membership_revoked``."""
        await self._leave_room(conn, group_id)
        await self.tell(conn, "membership_revoked", {"group_id": group_id})

    async def tell(self, conn: Connection, event: str, payload: dict[str, Any]) -> None:
        """An event for one connection of this node (not through the queue)."""
        if not conn.closed:
            await self.sio.emit(event, payload, to=conn.sid, ignore_queue=True)

    async def announce_offline(self, group_id: str, user_id: str) -> None:
        """Tell a room that a user of a dead node is gone (found by the presence sweep)."""
        name = user_id
        try:
            name = await self.chat.user_name(user_id) or user_id
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


def _in_room(conn: Connection, group_id: str) -> bool:
    return not conn.closed and group_id in conn.groups


def _check_open(conn: Connection) -> None:
    """Stop an event whose connection closed meanwhile (its answer goes nowhere)."""
    if conn.closed:
        raise ChatError("unauthorized", "The connection has closed.")
