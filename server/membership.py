"""When this node re-reads memberships (``handlers.membership`` applies what it finds).

- On MongoDB, one watcher per node follows the ``study_groups`` change stream and
  re-reads each group that changed. It starts again after errors, with a
  growing pause, and re-reads every connected user's groups whenever it
  (re)starts. Until it runs, and for good where the server has no change
  streams or ``MEMBERSHIP_CHANGE_STREAM=off``, the groups of this node's
  connected users are re-read every ``MEMBERSHIP_POLL_S`` instead.
- The platform's ``POST /study-groups/{id}/membership-changed`` re-reads that
  group here at once and tells the other nodes (a notice on the Redis queue).
- The embedded store changes only through this process, so it is not watched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from handlers.membership import MembershipTracker
from storage import StorageUnavailable, Store
from storage.base import ID_RE
from storage.mongo import MongoStore
from storage.mongo_membership import ChangeStreamsUnsupported, GroupChangeStream

from .scale_out import Cluster

log = logging.getLogger(__name__)

NOTICE = "membership_changed"
MIN_PAUSE_S, MAX_PAUSE_S = 0.5, 30.0


class MembershipWatch:
    def __init__(
        self,
        tracker: MembershipTracker,
        store: Store,
        *,
        poll_s: float,
        change_stream: bool,
        cluster: Cluster | None = None,
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.poll_s = poll_s
        self.change_stream = change_stream
        self.cluster = cluster
        self.mode = "off"  # what the watcher does now: "change stream", "polling" or "off"
        if cluster is not None:
            cluster.manager.on_notice(self._on_notice)

    async def changed(self, group_id: str) -> None:
        """The platform says this group's members changed: apply it on every node."""
        if self.cluster is not None:
            await self.cluster.manager.notify(NOTICE, {"group_id": group_id})
        await self.tracker.refresh_group(group_id)

    async def _on_notice(self, name: str, data: Any) -> None:
        group_id = data.get("group_id") if isinstance(data, dict) else None
        if name == NOTICE and isinstance(group_id, str) and ID_RE.fullmatch(group_id):
            await self.tracker.refresh_group(group_id.lower())

    async def lifecycle(self) -> AsyncIterator[None]:
        task = asyncio.ensure_future(self._watch()) if isinstance(self.store, MongoStore) else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self.tracker.close()

    async def _watch(self) -> None:
        assert isinstance(self.store, MongoStore)
        if not self.change_stream:
            await self._poll()
            return
        stream = GroupChangeStream(self.store)
        pause = MIN_PAUSE_S
        poller: asyncio.Task[None] | None = asyncio.ensure_future(self._poll())
        try:
            while True:
                try:
                    async for group_id in stream.changes():
                        if group_id is None:  # (re)started: whatever happened meanwhile is read now
                            if poller is not None:
                                poller.cancel()
                                poller = None
                            if self.mode != "change stream":
                                log.info("following the study_groups change stream")
                            self.mode, pause = "change stream", MIN_PAUSE_S
                            await self._safely(self.tracker.refresh_all())
                        else:
                            await self._safely(self.tracker.refresh_group(group_id))
                    continue  # invalidated: start again
                except ChangeStreamsUnsupported as exc:
                    log.info("no change streams on this MongoDB (%s); polling memberships every %s s",
                             exc, self.poll_s)
                    if poller is None:
                        poller = asyncio.ensure_future(self._poll())
                    await poller
                    return
                except StorageUnavailable as exc:
                    log.warning("the study_groups change stream stopped (%s); polling until it is back "
                                "(next try in %.1f s)", exc, pause)
                if poller is None:
                    poller = asyncio.ensure_future(self._poll())
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)

    async def _poll(self) -> None:
        self.mode = "polling"
        while True:
            await asyncio.sleep(self.poll_s)
            await self._safely(self.tracker.refresh_all())

    @staticmethod
    async def _safely(refresh: Any) -> None:
        """A re-read that storage could not answer is tried again by the next one."""
        try:
            await refresh
        except StorageUnavailable as exc:
            log.warning("cannot re-read memberships: %s", exc)
