"""Cross-node fan-out on python-socketio's pub/sub manager, in ``rev`` order,
on a channel per group.

``AsyncPubSubManager`` delivers an emit to this node's clients first and then
publishes it for the other nodes. Here:

- An emit to a group's room is published on that group's channel, which a
  node listens to only while one of its connections is in the room (and for
  ``linger_s`` after the last one left, so a member flapping between tabs does
  not churn subscriptions); a node's inbound traffic grows with the groups it
  serves, not with the deployment's. Everything else (notices, emits to every
  connection, python-socketio's own requests) goes on one channel every node
  listens to. With ``per_group=False`` every emit goes on that one channel,
  as older versions did. On a Redis Cluster the channels are shard channels
  (``SPUBLISH``/``SSUBSCRIBE``): see ``cluster.channels``.
- An emit to one of this node's own connections (``to=sid``) is not published.
- Publishes leave in the order the emits were made (one publisher task), so a
  node's own changes reach other nodes in ``rev`` order.
- Every node passes a group's message broadcasts (``message``,
  ``message_updated``, ``message_deleted``: each carries the message's new
  ``rev``) through a small reorder buffer: when ``rev`` N+2 arrives before N+1
  (made on another node a moment earlier), it waits up to ``REORDER_WAIT_S``
  for N+1. If N+1 never comes (a queue fault), the later changes go out anyway
  and clients see a ``rev`` jump, which they fill with ``get_changes``. A
  ``rev`` at or below the last one this node delivered for the group is
  dropped, so no connection ever sees a group's ``rev`` go backwards. New
  messages take ``seq`` and ``rev`` together, so ``message`` events stay in
  ``seq`` order as before. With ``fill_gaps_from``, a ``rev`` still missing
  after the wait is read from storage first (``rev_order``). When a group's
  channel was lost and subscribed again (Redis restarted, a cluster master
  failed over), what the node missed meanwhile is read from storage too.

Besides emits, nodes pass each other notices on the same channel
(``notify``/``on_notice``: ``{"method": "notice", "name", "data"}``), which
python-socketio's own listener would ignore.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.packet import Packet

from realtime.codec import SafeJSON
from realtime.manager import FastManager
from storage.base import StorageUnavailable

from .channels import Subscriptions
from .redis_scripts import PREFIX, PUBLISH_ALL, RedisConnection
from .rev_order import RevOrder

log = logging.getLogger(__name__)

CHANNEL = "socketio"  # the channel every node listens to (python-socketio's default name)
GROUP_CHANNEL_PREFIX, GROUP_CHANNEL_SUFFIX = PREFIX + "{g:", "}"
OUTBOX_LIMIT = 10_000
ORDERED_EVENTS = frozenset({"message", "message_updated", "message_deleted"})
PUBLISH_BATCH = 500  # publishes per script call
NOTICE_PREFIX = b'{"method":"notice",'  # how every notice starts (SafeJSON is compact, keys in order)

NoticeHandler = Callable[[str, Any], Awaitable[None]]


class OrderedRedisManager(AsyncPubSubManager, FastManager):
    def __init__(self, url: str, *, sharded: bool = False, per_group: bool = True, linger_s: float = 30.0,
                 logger: Any = None, json: Any = None) -> None:
        super().__init__(channel=CHANNEL, logger=logger, json=json)
        self.per_group = per_group
        self.linger_s = linger_s
        self.subscriptions = Subscriptions(url, sharded=sharded, on_message=self._take,
                                           on_resubscribed=self._resubscribed)
        self._outbox: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None
        self._deliveries: set[asyncio.Task] = set()
        self._order = RevOrder(self._deliver_now)
        # The application's Redis connection (set by the cluster): publishes
        # share its pipelines with the other script calls of the same moment.
        self.scripts: RedisConnection | None = None
        self._notice_handler: NoticeHandler | None = None
        self._own = f'"host_id":"{self.host_id}"}}'.encode()
        self._command = "SPUBLISH" if sharded else "PUBLISH"
        # Group rooms this node listens for, and joins waiting for their channel.
        self._watched: set[str] = set()
        self._joining: dict[str, int] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self.received = 0  # messages read from Redis, this node's own included
        self.published = 0

    def queue_figures(self) -> tuple[int, int]:
        """Group channels listened to now; channels subscribed again after they were lost."""
        return len(self._watched), self.subscriptions.resubscriptions

    def initialize(self) -> None:
        super().initialize()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_in_order())

    async def _thread(self) -> None:
        """Listen to the channel every node shares (group channels follow the
        rooms); the subscriptions' readers hand each message to ``_take``."""
        await self.subscriptions.watch(self.channel)

    def channel_of(self, room: Any) -> str:
        """The channel an emit to ``room`` is published on."""
        if self.per_group and isinstance(room, str):
            return group_channel(room)
        return self.channel

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        namespace = namespace or "/"
        if kwargs.get("ignore_queue") or (isinstance(room, str) and self.is_connected(room, namespace)):
            # For this node's connections only (``room`` is one of them): nothing to publish.
            return await FastManager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid,
                                          callback=callback, **kwargs)
        if callback is not None:  # python-socketio's way, on the channel every node listens to
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        message = {
            "method": "emit", "event": event, **_wire_data(data),
            "namespace": namespace, "room": room, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        if self._outbox is None:  # not started yet (no connection so far)
            await self._publish(message, self.channel_of(room))
        elif self._outbox.qsize() >= OUTBOX_LIMIT:
            log.error("Redis publish queue full; dropping an emit for other nodes (clients fill gaps)")
        else:
            self._outbox.put_nowait((self.channel_of(room), message))
        await self._handle_emit(message)

    # -- the rooms this node listens for --

    async def enter_room(self, sid, namespace, room, eio_sid=None):
        if not (self.per_group and isinstance(room, str) and room != sid and self.is_connected(sid, namespace)):
            return await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        lingering = self._lingering.pop(room, None)
        if lingering is not None:
            lingering.cancel()
        self._joining[room] = self._joining.get(room, 0) + 1
        try:
            # Listen first: whatever is published after this join reads storage reaches this node.
            await self.subscriptions.watch(group_channel(room))
            self._watched.add(room)
            return await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        finally:
            left = self._joining.pop(room) - 1
            if left:
                self._joining[room] = left
            elif not self._in_use(room):
                self._linger(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        if room in self._watched and not self._in_use(room):
            self._linger(room)

    def _in_use(self, room: str) -> bool:
        return room in self._joining or room in self.rooms.get("/", ())

    def _linger(self, room: str) -> None:
        if room not in self._lingering and room in self._watched:
            self._lingering[room] = asyncio.get_running_loop().call_later(self.linger_s, self._release, room)

    def _release(self, room: str) -> None:
        self._lingering.pop(room, None)
        if self._in_use(room):
            return
        self._watched.discard(room)
        self._order.forget(room)
        self.subscriptions.unwatch(group_channel(room))

    def joined(self, room: str, latest_rev: int) -> None:
        """A connection here joined ``room`` holding (or paging to) every change up to
        ``latest_rev``: the group's order starts there if it has not started."""
        self._order.baseline(room, latest_rev)

    def _resubscribed(self, channels: set[bytes]) -> None:
        """Channels confirmed again after they were lost: read what was missed meanwhile."""
        for channel in channels:
            room = room_of(channel)
            if room is None:
                continue
            task = asyncio.ensure_future(self._order.resync(room))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    # -- receiving --

    async def _take(self, data: bytes) -> None:
        """One message from any channel (python-socketio's listener loop, which
        also skips this node's own publishes before they are decoded: ``host_id``
        is the last key of every message this node publishes, so the JSON, compact
        (see ``SafeJSON``), ends with it)."""
        self.received += 1
        if data.endswith(self._own):
            return
        if data.startswith(NOTICE_PREFIX):
            self._take_notice(data)
            return
        try:
            message = self.json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or "method" not in message:
            return
        method = message["method"]
        try:
            if method == "callback":
                await self._handle_callback(message)
            elif message.get("host_id") != self.host_id:
                handle = self._handlers.get(method)
                if handle is not None:
                    await handle(self, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling a %r message from Redis failed", method)

    _handlers: dict[str, Callable[[Any, dict[str, Any]], Awaitable[None]]] = {
        "emit": lambda self, m: self._handle_emit(m),
        "disconnect": lambda self, m: self._handle_disconnect(m),
        "enter_room": lambda self, m: self._handle_enter_room(m),
        "leave_room": lambda self, m: self._handle_leave_room(m),
        "close_room": lambda self, m: self._handle_close_room(m),
    }

    # -- publishing --

    async def _publish(self, data: dict[str, Any], channel: str | None = None) -> None:
        """Publish one message now, with one more try (as python-socketio's
        ``_publish``); python-socketio's own requests come here."""
        encoded = SafeJSON.dumpb(data)
        for tries_left in (1, 0):
            try:
                client = self.scripts.client if self.scripts is not None else None
                if client is None:
                    raise StorageUnavailable("no Redis connection")
                await client.execute_command(self._command, channel or self.channel, encoded)
                self.published += 1
                return
            except (RedisError, OSError, StorageUnavailable) as exc:
                log.error("Cannot publish to Redis (%s)%s", exc, "; retrying" if tries_left else "; giving up")

    async def _publish_in_order(self) -> None:
        """Publish what is queued, in order: everything queued meanwhile goes
        out together, one batch at a time."""
        outbox = self._outbox
        assert outbox is not None
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < PUBLISH_BATCH:
                batch.append(outbox.get_nowait())
            try:
                await self._publish_batch(batch)
            except Exception:  # _publish logs and gives up by itself; never stop the loop
                log.exception("publishing to Redis failed")

    async def _publish_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """One script call per channel publishes that channel's messages, in
        order, and the calls leave together (subscribers get the messages one by
        one, as from ``PUBLISH``)."""
        channels: dict[str, list[tuple[dict[str, Any], bytes]]] = {}
        for channel, message in batch:
            try:
                encoded = SafeJSON.dumpb(message)  # bytes travel as base64: see _wire_data
            except (TypeError, ValueError) as exc:  # not JSON: this emit alone stays on this node
                log.error("Cannot publish a %r emit to other nodes: %s", message.get("event"), exc)
                continue
            channels.setdefault(channel, []).append((message, encoded))
        calls = []
        for channel, messages in channels.items():
            sizes = ",".join([str(len(data)) for _, data in messages])
            call: asyncio.Future | None = None
            try:
                if self.scripts is not None:
                    call = self.scripts.call(PUBLISH_ALL, [channel],
                                             [self._command, b"".join(d for _, d in messages), sizes])
                    call.add_done_callback(_retrieve)  # answered even if this task is cancelled first
            except StorageUnavailable:
                pass
            calls.append((channel, messages, call))
        for channel, messages, call in calls:
            try:
                if call is None:
                    raise StorageUnavailable("no Redis connection for scripts")
                await call
                self.published += len(messages)
            except (RedisError, OSError, StorageUnavailable) as exc:  # one more try each, as python-socketio's
                log.error("Cannot publish %d messages to Redis (%s); retrying one by one", len(messages), exc)
                for message, _ in messages:
                    await self._publish(message, channel)

    def on_notice(self, handler: NoticeHandler) -> None:
        """Call ``handler(name, data)`` for each notice another node sends."""
        self._notice_handler = handler

    async def notify(self, name: str, data: Any) -> None:
        """Send a notice to every other node (after the emits queued before it)."""
        message = {"method": "notice", "name": name, "data": data, "host_id": self.host_id}
        if self._outbox is None:
            await self._publish(message)
        else:
            self._outbox.put_nowait((self.channel, message))

    def _take_notice(self, data: bytes) -> None:
        """Hand a notice to the handler in a task of its own (the listener goes on)."""
        try:
            notice = SafeJSON.loads(data)
            name, payload = notice["name"], notice.get("data")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("Ignoring a malformed notice from Redis: %s", exc)
            return
        if self._notice_handler is None:
            return
        task = asyncio.ensure_future(self._notice_handler(name, payload))
        self._deliveries.add(task)
        task.add_done_callback(self._notice_done)

    def _notice_done(self, task: asyncio.Task) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("A notice from another node failed", exc_info=task.exception())

    def fill_gaps_from(
        self, changes: Callable[[str, int, int], Awaitable[list[tuple[str, dict[str, Any]]]]]
    ) -> None:
        """Where missed changes are read from: ``changes(group, after_rev, before_rev)``
        gives ``(event, message)`` for each message whose ``rev`` lies strictly between."""

        async def fill(group_id: str, after: int, before: int) -> list[tuple[int, dict[str, Any]]]:
            return [
                (payload["rev"], {"method": "emit", "event": event, **_wire_data(payload), "namespace": "/",
                                  "room": group_id, "skip_sid": None, "callback": None, "host_id": self.host_id})
                for event, payload in await changes(group_id, after, before)
            ]

        self._order.fill = fill

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        payload = data[0] if isinstance(data, list) and len(data) == 1 else None
        if (
            message.get("event") in ORDERED_EVENTS
            and not message.get("binary")
            and isinstance(payload, dict)
            and isinstance(rev := payload.get("rev"), int)
            and rev > 0
            and isinstance(message.get("room"), str)
        ):
            self._order.offer(message["room"], rev, message)
            return
        await super()._handle_emit(message)

    def _deliver_now(self, message: dict[str, Any]) -> None:
        """Deliver in calling order: in place for plain emits, else through a
        task (tasks start in creation order and queue their packets at once)."""
        data = message["data"]
        if not message.get("binary") and isinstance(data, list) and len(data) == 1 and \
                self.emit_now(message["event"], data[0], message.get("namespace") or "/",
                              message.get("room"), message.get("skip_sid")):
            return
        task = asyncio.ensure_future(super()._handle_emit(message))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def close(self) -> None:
        """Stop publishing (after what is queued left, briefly) and listening,
        then release the subscriptions' connections."""
        if self._publisher is not None:
            for _ in range(20):
                if self._outbox is None or self._outbox.empty():
                    break
                await asyncio.sleep(0.05)
        tasks = [t for t in (self._publisher, getattr(self, "thread", None), *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._publisher = None
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()
        self._order.close()
        await self.subscriptions.close()


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def group_channel(group_id: str) -> str:
    """A group's channel. Its hash tag puts it in the hash slot of the group's keys."""
    return f"{GROUP_CHANNEL_PREFIX}{group_id}{GROUP_CHANNEL_SUFFIX}"


def room_of(channel: bytes) -> str | None:
    """The group whose channel ``channel`` is, if it is one."""
    text = channel.decode(errors="replace")
    if text.startswith(GROUP_CHANNEL_PREFIX) and text.endswith(GROUP_CHANNEL_SUFFIX):
        return text[len(GROUP_CHANNEL_PREFIX):-len(GROUP_CHANNEL_SUFFIX)]
    return None


def _wire_data(data: Any) -> dict[str, Any]:
    """An emit's arguments as python-socketio's Redis messages carry them: a
    tuple is several arguments, and ``bytes`` travel as base64 attachments."""
    args = list(data) if isinstance(data, tuple) else [data]
    if not Packet.data_is_binary(args):
        return {"data": args, "binary": False}
    args, attachments = Packet.deconstruct_binary(args)
    return {"data": [args, *[base64.b64encode(a).decode() for a in attachments]], "binary": True}
