"""Cross-node fan-out on python-socketio's Redis manager, in ``rev`` order.

``AsyncRedisManager`` delivers an emit to this node's clients first and then
publishes it for the other nodes. Two things are added here:

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
  after the wait is read from storage first (``rev_order``).

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

import redis.asyncio as aioredis
import socketio
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from socketio.packet import Packet

from realtime.codec import SafeJSON
from realtime.manager import FastManager
from storage.base import StorageUnavailable

from .redis_scripts import PUBLISH_ALL, RedisConnection
from .rev_order import RevOrder

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 10_000
ORDERED_EVENTS = frozenset({"message", "message_updated", "message_deleted"})
PUBLISH_BATCH = 500  # publishes per script call
NOTICE_PREFIX = b'{"method":"notice",'  # how every notice starts (SafeJSON is compact, keys in order)

NoticeHandler = Callable[[str, Any], Awaitable[None]]


class OrderedRedisManager(socketio.AsyncRedisManager, FastManager):
    redis: aioredis.Redis | None  # python-socketio's client: one for the manager's life here
    pubsub: PubSub | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None
        self._deliveries: set[asyncio.Task] = set()
        self._order = RevOrder(self._deliver_now)
        # The application's Redis connection (set by the cluster): publishes
        # share its pipelines with the other script calls of the same moment.
        self.scripts: RedisConnection | None = None
        self._notice_handler: NoticeHandler | None = None

    def initialize(self) -> None:
        super().initialize()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_in_order())

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if kwargs.get("ignore_queue") or callback is not None or self._outbox is None:
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        message = {
            "method": "emit", "event": event, **_wire_data(data),
            "namespace": namespace or "/", "room": room, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            log.error("Redis publish queue full; dropping an emit for other nodes (clients fill gaps)")
        else:
            self._outbox.put_nowait(message)
        await self._handle_emit(message)

    def _redis_connect(self) -> None:
        """One Redis client for the manager's life (its pool reconnects by
        itself); a new pub/sub on it for each subscription."""
        if self.redis is None:
            super()._redis_connect()
            return
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _publish(self, data: dict[str, Any]) -> None:
        """python-socketio's fallback publish (two tries), on the manager's one
        client: it never replaces the pub/sub the listener reads."""
        encoded = SafeJSON.dumpb(data)
        for tries_left in (1, 0):
            try:
                if self.redis is None:
                    self._redis_connect()
                assert self.redis is not None
                await self.redis.publish(self.channel, encoded)
                return
            except (RedisError, OSError) as exc:
                log.error("Cannot publish to Redis (%s)%s", exc, "; retrying" if tries_left else "; giving up")

    async def _listen(self):
        """python-socketio's listener (subscribe, yield the data of each message
        on the channel, reconnect with a growing pause after an error) as one
        generator instead of three, which also skips this node's own publishes
        before they are decoded (python-socketio decodes every message, then
        drops its own by ``host_id``). ``host_id`` is the last key of every
        message this node publishes, so the JSON (compact, see ``SafeJSON``)
        ends with it."""
        channel = self.channel.encode()
        own = f'"host_id":"{self.host_id}"}}'.encode()
        pause = 1
        while True:
            try:
                self._redis_connect()
                pubsub = self.pubsub
                assert pubsub is not None  # _redis_connect made it
                await pubsub.subscribe(self.channel)
                pause = 1
                async for message in pubsub.listen():
                    data = message.get("data")
                    if message["type"] == "message" and message["channel"] == channel and \
                            not (isinstance(data, bytes) and data.endswith(own)):
                        if isinstance(data, bytes) and data.startswith(NOTICE_PREFIX):
                            self._take_notice(data)
                        else:
                            yield data
            except Exception as exc:
                log.error("Cannot receive from Redis (%s); retrying in %d s", exc, pause)
                await self._close_pubsub()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 60)

    async def _close_pubsub(self) -> None:
        """Release the pub/sub's connection (a broken one is simply dropped)."""
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as exc:  # its connection is gone already
                log.debug("closing the Redis pub/sub: %s", exc)

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

    async def _publish_batch(self, batch: list[dict[str, Any]]) -> None:
        """One script call publishes the whole batch, in order (subscribers get
        the messages one by one, as from ``PUBLISH``)."""
        encoded = []
        for message in list(batch):
            try:
                encoded.append(SafeJSON.dumpb(message))  # bytes travel as base64: see _wire_data
            except (TypeError, ValueError) as exc:  # not JSON: this emit alone stays on this node
                log.error("Cannot publish a %r emit to other nodes: %s", message.get("event"), exc)
                batch.remove(message)
        if not batch:
            return
        try:
            if self.scripts is None:
                raise StorageUnavailable("no Redis connection for scripts")
            sizes = ",".join([str(len(data)) for data in encoded])
            await self.scripts.call(PUBLISH_ALL, [], [self.channel, b"".join(encoded), sizes])
        except (RedisError, OSError, StorageUnavailable) as exc:  # one more try each, as python-socketio's _publish
            log.error("Cannot publish %d messages to Redis (%s); retrying one by one", len(batch), exc)
            for message in batch:
                await self._publish(message)

    def on_notice(self, handler: NoticeHandler) -> None:
        """Call ``handler(name, data)`` for each notice another node sends."""
        self._notice_handler = handler

    async def notify(self, name: str, data: Any) -> None:
        """Send a notice to every other node (after the emits queued before it)."""
        message = {"method": "notice", "name": name, "data": data, "host_id": self.host_id}
        if self._outbox is None:
            await self._publish(message)
        else:
            self._outbox.put_nowait(message)

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
        then release the pub/sub and the client with their connections."""
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
        self._order.close()
        await self._close_pubsub()
        client, self.redis = self.redis, None
        self.connected = False
        if client is not None:
            await client.aclose()


def _wire_data(data: Any) -> dict[str, Any]:
    """An emit's arguments as python-socketio's Redis messages carry them: a
    tuple is several arguments, and ``bytes`` travel as base64 attachments."""
    args = list(data) if isinstance(data, tuple) else [data]
    if not Packet.data_is_binary(args):
        return {"data": args, "binary": False}
    args, attachments = Packet.deconstruct_binary(args)
    return {"data": [args, *[base64.b64encode(a).decode() for a in attachments]], "binary": True}
