"""Membership changes made by the platform, applied to this node's connections.

The platform owns ``study_groups.members``. When a user stops being a member of
a group, every connection of theirs here leaves the group's room and gets
``membership_revoked {group_id}``; when a user becomes one, their connections get
``group_added {group}``. Every event re-reads membership from the store, so a
revoked user is refused everywhere at once; what this module adds is the room
(no more broadcasts) and the news.

To tell a change from what was already so, the groups of each user connected
here are kept as last read: read in batches when the user's first connection
opens, and replaced by every re-read. A user added to a group between their
connection opening and that first read is still told (the read finds the
group already there, but the user may have listed their groups before). When to re-read is the server's choice
(``server.membership``: a change stream, polling, the platform's call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from storage.base import StorageUnavailable

from .errors import ChatError

if TYPE_CHECKING:
    from .connections import Connection
    from .events import ChatEvents

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.05  # first connections of a moment share one read
BATCH_SIZE = 1000
RETRY_S = 1.0


class MembershipTracker:
    """What each user connected to this node is a member of, and applying changes to it."""

    def __init__(self, events: ChatEvents) -> None:
        self.events = events
        self.chat = events.chat
        self._known: dict[str, set[str]] = {}  # user id -> group ids, as last read
        self._local: dict[str, int] = {}  # user id -> connections on this node
        self._pending: set[str] = set()  # users whose groups are still to be read
        # Groups a pending user was added to before their first read: that read will find
        # them already there, and the user is still to be told (their list may predate it).
        self._added_while_pending: dict[str, set[str]] = {}
        self._loader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one read-and-apply at a time: later reads win
        # Counts re-reads of memberships, moved on as soon as one has read the store
        # (before it applies what it found): a join that sees it move between its
        # own membership check and entering the room checks again (``join_group``).
        self.epoch = 0

    # -- connections (called by the events) --

    def connected(self, conn: Connection) -> None:
        user_id = conn.user_id
        self._local[user_id] = self._local.get(user_id, 0) + 1
        if user_id not in self._known:
            self._pending.add(user_id)
            if self._loader is None or self._loader.done():
                self._loader = asyncio.ensure_future(self._load_pending())

    def disconnected(self, conn: Connection) -> None:
        user_id = conn.user_id
        left = self._local.get(user_id, 0) - 1
        if left > 0:
            self._local[user_id] = left
            return
        self._local.pop(user_id, None)
        self._known.pop(user_id, None)
        self._pending.discard(user_id)
        self._added_while_pending.pop(user_id, None)

    async def _load_pending(self) -> None:
        """Read the groups of users whose first connection just opened (no news: a start)."""
        await asyncio.sleep(BATCH_WAIT_S)
        while self._pending:
            batch = [self._pending.pop() for _ in range(min(BATCH_SIZE, len(self._pending)))]
            try:
                async with self._lock:
                    found = await self.chat.user_groups(batch)
                    added: list[tuple[str, str]] = []
                    for user_id, groups in found.items():
                        if user_id in self._local and user_id not in self._known:
                            self._known[user_id] = groups
                            news = self._added_while_pending.pop(user_id, set()) & groups
                            added.extend((user_id, group_id) for group_id in news)
                    if added:
                        await self._apply(self._by_user(), [], added)
            except StorageUnavailable as exc:
                log.warning("cannot read the groups of %d connected users (trying again): %s", len(batch), exc)
                self._pending.update(u for u in batch if u in self._local and u not in self._known)
                await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        if self._loader is not None:
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)

    # -- re-reads --

    async def refresh_group(self, group_id: str) -> None:
        """Re-read one group's members and apply the difference to this node's users."""
        async with self._lock:
            members = await self.chat.group_members(group_id) or frozenset()
            self.epoch += 1
            revoked: list[tuple[str, str]] = []
            added: list[tuple[str, str]] = []
            by_user = self._by_user()
            for user_id, conns in by_user.items():
                known = self._known.get(user_id)
                was = known is not None and group_id in known
                if user_id not in members:
                    if was or any(group_id in c.groups for c in conns):
                        revoked.append((user_id, group_id))
                    if known is not None:
                        known.discard(group_id)
                elif known is not None and not was:
                    known.add(group_id)
                    added.append((user_id, group_id))
                elif known is None:  # not read yet: the read will find it, and tell (_load_pending)
                    self._added_while_pending.setdefault(user_id, set()).add(group_id)
            await self._apply(by_user, revoked, added)

    async def refresh_all(self) -> None:
        """Re-read the groups of every user connected here and apply the differences."""
        async with self._lock:
            found = await self.chat.user_groups(list(self._local))
            self.epoch += 1
            revoked: list[tuple[str, str]] = []
            added: list[tuple[str, str]] = []
            by_user = self._by_user()
            for user_id, conns in by_user.items():
                now = found.get(user_id)
                if now is None:  # connected during the read: its own read follows
                    continue
                known = self._known.get(user_id)
                gone = {g for c in conns for g in c.groups if g not in now}
                if known is not None:
                    gone |= known - now
                    added.extend((user_id, g) for g in now - known)
                revoked.extend((user_id, g) for g in gone)
                self._known[user_id] = set(now)
                self._pending.discard(user_id)
            await self._apply(by_user, revoked, added)

    # -- telling the connections --

    def _by_user(self) -> dict[str, list[Connection]]:
        by_user: dict[str, list[Connection]] = {}
        for conn in self.events.connections.values():
            if not conn.closed:
                by_user.setdefault(conn.user_id, []).append(conn)
        return by_user

    async def _apply(
        self,
        by_user: dict[str, list[Connection]],
        revoked: Iterable[tuple[str, str]],
        added: Iterable[tuple[str, str]],
    ) -> None:
        jobs = [self._revoke(by_user[user_id], user_id, group_id) for user_id, group_id in revoked]
        jobs += [self._announce(by_user[user_id], user_id, group_id) for user_id, group_id in added]
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, StorageUnavailable):
                log.warning("membership change not fully applied: %s", result)
            elif isinstance(result, BaseException):
                log.error("membership change not applied", exc_info=result)

    async def _revoke(self, conns: list[Connection], user_id: str, group_id: str) -> None:
        for conn in conns:
            await self.events.evict(conn, group_id)
        log.info("membership revoked user=%s group=%s", user_id, group_id)

    async def _announce(self, conns: list[Connection], user_id: str, group_id: str) -> None:
        try:
            group = await self.chat.group_summary(user_id, group_id)
        except ChatError:  # changed again meanwhile: the next re-read tells
            return
        for conn in conns:
            await self.events.tell(conn, "group_added", {"group": group})
        log.info("membership added user=%s group=%s", user_id, group_id)
