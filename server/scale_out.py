"""Several nodes: the Redis message queue, shared presence and rate limits,
and the heartbeat that keeps this node's presence alive in Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from cluster.presence import RedisPresence
from cluster.rate_limits import LocalLimiter, RedisLimiter
from cluster.redis_manager import OrderedRedisManager
from cluster.redis_scripts import RedisConnection
from handlers.events import ChatEvents
from realtime.codec import SafeJSON
from storage import Store
from storage.base import Message

from .config import Settings
from .logs import library_logger

log = logging.getLogger(__name__)

GAP_FILL_LIMIT = 100  # changes read per gap; clients fill what lies beyond


class Cluster:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        limits = settings.rate_limits
        self.connection = RedisConnection(settings.redis_url, cluster=settings.redis_cluster)
        self.manager = OrderedRedisManager(
            settings.redis_url,
            sharded=settings.redis_cluster,
            per_group=settings.redis_channels == "group",
            linger_s=settings.redis_channel_linger_s,
            logger=library_logger("socketio.redis"),
            json=SafeJSON,  # the same JSON module as the server's packets
        )
        self.manager.scripts = self.connection
        self.presence = RedisPresence(self.connection, self.manager.host_id, settings.presence_ttl_s)
        self.limiter = RedisLimiter(self.connection, limits, LocalLimiter(limits))
        self.interval_s = settings.presence_ttl_s / 3

    def fill_gaps_from(self, store: Store) -> None:
        """Changes a node missed on the queue are read from ``store`` (see ``cluster.rev_order``)."""

        async def changes(group_id: str, after: int, before: int) -> list[tuple[str, dict[str, Any]]]:
            found, _more, _latest = await store.get_changes(
                group_id, after_rev=after, limit=min(GAP_FILL_LIMIT, before - after - 1)
            )
            return [(_broadcast_event(m), dict(m)) for m in found if m["rev"] < before]

        self.manager.fill_gaps_from(changes)

    async def ping(self) -> None:
        await self.connection.ping()

    async def lifecycle(self, events: ChatEvents) -> AsyncIterator[None]:
        try:
            await self.connection.open()
        except Exception as exc:
            await self.connection.close()
            raise StartupError(f"cannot reach Redis at REDIS_URL: {exc}") from exc
        task = asyncio.ensure_future(self._heartbeat(events))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.manager.close()
            await self.connection.close()

    async def _heartbeat(self, events: ChatEvents) -> None:
        """Refresh this node's entries; announce users of dead nodes offline."""
        healthy = True
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.presence.heartbeat()
                for group_id, user_id in await self.presence.sweep():
                    await events.announce_offline(group_id, user_id)
                if not healthy:
                    log.warning("Redis is back; presence restored")
                healthy = True
            except Exception as exc:  # keep serving local clients meanwhile
                if healthy:
                    log.error("Redis unavailable for presence heartbeat: %s", exc)
                healthy = False


def _broadcast_event(message: Message) -> str:
    """The event a change goes out as, judged from the message's current state."""
    if message["deleted"]:
        return "message_deleted"
    return "message" if message["edited_at"] is None else "message_updated"


class StartupError(Exception):
    """A dependency named in the settings cannot be reached at start."""
