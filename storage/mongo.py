"""The MongoDB store, on pymongo's ``AsyncMongoClient``.

Collections. ``users {_id, full_name, last_name}`` and ``study_groups {_id, name,
members: [ObjectId]}`` belong to the wider application and are only read; this
store creates no index on them, so the owning application should index
``study_groups.members`` (``list_groups`` and membership checks query it).
The store's own collections are:

``messages``
    ``{_id: ObjectId, group_id: ObjectId, seq: int, kind: str, sender_id: ObjectId | null,
    sender: str, content: str, timestamp: date, client_msg_id: str | null,
    edited_at: date | null, deleted: bool, mentions?: [ObjectId]}`` (a
    document without ``kind`` is a ``"message"``; the platform's ``"system"``
    messages have ``sender_id: null``; ``mentions`` is left out when the
    message mentions no one). Anything else that writes here
    (``migrate-legacy-chat``) must write the same shape, ``deleted: false``
    included: the unread counts read it through an index. An unread count is
    the seqs above the reader's marker (seqs are contiguous) minus the deleted
    ones and the reader's own among them, so a join costs the same whatever the
    group's size: the reader's own are walked, and the group's deleted seqs (and
    open questions) are kept by this process as of a revision and caught up from
    the changes since (``storage.mongo_tally``).
    Revisions add ``rev: int`` (the latest change's) and ``revs: [int]``
    (every revision the message ever took); messages stored before
    revisions existed have neither until ``storage.mongo_revisions`` gives
    them one.
``read_markers``
    ``{user_id: ObjectId, group_id: ObjectId, seq: int}``.
``webhook_outbox``
    webhook events waiting to be sent: ``storage.mongo_outbox``.

Sequence numbers. A message gets ``max(seq) + 1`` of its group and the unique
``(group_id, seq)`` index arbitrates between writers: the loser of a race gets
``DuplicateKeyError`` and tries the next number. Nothing is reserved before
the insert, so a failed insert leaves no hole, and a number is only taken after
the one below it was seen stored, so a higher ``seq`` is never visible before a
lower one. Writers of one group inside a process queue on a lock (racing on one
unique index is slow, on SecantusDB especially); across processes the retry is
enough. Sends that queued together are one ordered ``insert_many``, numbered
from the top this process last stored, with no read first: the unique indexes
refuse a number another process took (the rest are numbered again from a fresh
read of the top) and a repeated ``client_msg_id`` (that send is answered with
the first one stored). So a send costs one command when this process wrote to
the group last, and a fraction of one when several arrive together. Because seqs are contiguous, a page is a ``seq`` range and costs the
same whatever the group's size; the group's top is found from a per-process
lower bound and a bounded range probe (galloping with point probes when far
behind), which also works on servers that cannot stop an index walk at a
``limit``. This assumes messages are never removed from the collection
(deletion is a tombstone). The search itself is ``storage.mongo_counter``.

Revisions. Every change (a new message, an edit, a delete) takes the group's
next ``rev`` the same way, in the same single-document write that makes the
change: the number is pushed onto the message's ``revs`` array, and a unique
multikey index on ``(group_id, revs)`` arbitrates. Because a message keeps
every number it took, a number is never freed by a later change of the same
message, so ``revs`` is contiguous like ``seq`` and its top is found the same
way; and a writer only takes ``top + 1`` once ``top`` is stored, so changes
become visible in ``rev`` order. Catch-up reads the current ``rev`` through
``(group_id, rev)`` in bounded windows (superseded numbers leave holes there,
so a window grows until it holds a page).

The legacy migration's reads and writes are in ``storage.mongo_legacy``; the
membership reads and the ``study_groups`` change stream in ``storage.mongo_membership``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from . import conversation, mongo_conversation, mongo_membership, mongo_search
from .base import (
    GroupAccess,
    GroupSummary,
    Message,
    NewMessage,
    ReadState,
    StorageUnavailable,
    User,
    display_name,
    now_ms,
)
from .keyed_lock import KeyedLock
from .mongo_counter import GroupCounter
from .mongo_documents import (
    CLIENT_MSG_INDEX,
    MARKER_INDEXES,
    MESSAGE_INDEXES,
    REVS_INDEX,
    SEQ_INDEX,
    client_msg_filter,
    duplicate_index,
    group_name,
    live_message_filter,
    oid,
    oid_or_none,
    to_wire,
)
from .mongo_tally import GroupTally
from .search_words import Query

DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
PING_TIMEOUT_S = 2.0
MAX_INSERT_ATTEMPTS = 200
SUMMARIES_AT_ONCE = 8  # groups a group list reads at a time (a few reads each)
DUPLICATE_KEY = 11000

T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S", bound="MongoStore")


def _unavailable(
    fn: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Turn driver failures (down, timed out, refused) into ``StorageUnavailable``;
    the signature it wraps is kept (``MongoStore`` provably satisfies ``Store``)."""

    @functools.wraps(fn)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._client is None:
            raise StorageUnavailable("the MongoDB store is not open")
        try:
            return await fn(self, *args, **kwargs)
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {_short(exc)}") from exc

    return wrapper


class MongoStore:
    """A ``Store`` on MongoDB (or anything speaking its wire protocol)."""

    def __init__(self, uri: str, db_name: str) -> None:
        self._uri = uri
        self._db_name = db_name
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._writer = KeyedLock()  # one writer per group in this process
        self._seqs = GroupCounter("seq")
        self._revs = GroupCounter("revs", multikey=True)
        self._tally = GroupTally(self._revs)
        self._element_ranges = True  # whether the server bounds an index read by one array element's range

    @property
    def database(self) -> Any:
        """The open database (for the store's own maintenance, ``storage.mongo_revisions``)."""
        return self._db

    # -- lifecycle --

    async def open(self, *, create_indexes: bool = True) -> None:
        """Connect, check the server answers, create indexes (idempotent).

        ``create_indexes=False`` writes nothing at all (``migrate-legacy-chat --dry-run``).
        """
        if self._client is not None:
            return
        options: dict[str, Any] = {"tz_aware": True}
        if "serverselectiontimeoutms=" not in self._uri.lower():
            options["serverSelectionTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
        where = _redacted(self._uri)
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self._uri, **options)
        except PyMongoError as exc:
            raise StorageUnavailable(f"MONGODB_URI ({where}) is not usable: {exc}") from exc
        try:
            await client.admin.command("ping")
            # SecantusDB (the test server) cannot bound an index read by a range of one
            # array element; search reads prefixes differently there (storage.mongo_search).
            self._element_ranges = "secantusVersion" not in await client.admin.command("buildInfo")
            self._revs.element_ranges = self._element_ranges
            db = client[self._db_name]
            if create_indexes:
                await db.messages.create_indexes(MESSAGE_INDEXES)
                await db.read_markers.create_indexes(MARKER_INDEXES)
        except PyMongoError as exc:
            # Server selection gives up just as the monitor retries, and a close()
            # that cancels the monitor mid-connect leaks its socket (pymongo
            # PYTHON-5867); a refused connect is over within milliseconds.
            await asyncio.sleep(0.05)
            await client.close()
            raise StorageUnavailable(
                f"MongoDB at MONGODB_URI ({where}) could not be opened: {_short(exc)}"
            ) from exc
        except BaseException:  # cancelled while opening
            await client.close()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @_unavailable
    async def ping(self) -> None:
        with pymongo.timeout(PING_TIMEOUT_S):
            await self._db.command("ping")

    # -- users and groups (read-only) --

    @_unavailable
    async def get_user(self, user_id: str) -> User | None:
        uid = oid_or_none(user_id)
        if uid is None:
            return None
        doc = await self._db.users.find_one({"_id": uid}, {"full_name": 1, "last_name": 1})
        return None if doc is None else User(str(uid), display_name(doc, str(uid)))

    @_unavailable
    async def get_group(self, group_id: str, user_id: str) -> GroupAccess | None:
        gid, uid = oid_or_none(group_id), oid_or_none(user_id)
        if gid is None:
            return None
        # `$elemMatch` sends back at most the caller's own entry, never the whole array.
        projection: dict[str, Any] = {"name": 1}
        if uid is not None:
            projection["members"] = {"$elemMatch": {"$eq": uid}}
        doc = await self._db.study_groups.find_one({"_id": gid}, projection)
        if doc is None:
            return None
        return GroupAccess(str(gid), group_name(doc), bool(doc.get("members")))

    @_unavailable
    async def get_group_for(self, group_id: str, user_ids: Collection[str]) -> dict[str, GroupAccess] | None:
        gid = oid_or_none(group_id)
        if gid is None:
            return None
        uids = {user_id: oid_or_none(user_id) for user_id in user_ids}
        asked = [u for u in uids.values() if u is not None]
        # Only the asked-for members come back, never the whole array.
        pipeline = [{"$match": {"_id": gid}},
                    {"$project": {"name": 1, "members": {"$setIntersection": ["$members", asked]}}}]
        found = await (await self._db.study_groups.aggregate(pipeline)).to_list(1)
        if not found:
            return None
        doc = found[0]
        members = set(doc.get("members") or ())
        name = group_name(doc)
        return {user_id: GroupAccess(str(gid), name, uid is not None and uid in members) for user_id, uid in uids.items()}

    @_unavailable
    async def group_members(self, group_id: str) -> frozenset[str] | None:
        return await mongo_membership.group_members(self._db, group_id)

    @_unavailable
    async def user_groups(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        return await mongo_membership.user_groups(self._db, user_ids)

    @_unavailable
    async def list_groups(self, user_id: str) -> list[GroupSummary]:
        uid = oid_or_none(user_id)
        if uid is None:
            return []
        groups = await self._db.study_groups.find({"members": uid}, {"name": 1}).to_list(None)
        if not groups:
            return []
        markers = {
            doc["group_id"]: int(doc["seq"])
            async for doc in self._markers.find(
                {"user_id": uid, "group_id": {"$in": [g["_id"] for g in groups]}},
                {"group_id": 1, "seq": 1},
            )
        }

        async def summary(group: dict[str, Any]) -> GroupSummary:
            gid = group["_id"]
            latest, rev = await _both(self._top_seq(gid), self._top_rev(gid))
            last = markers.get(gid, 0)
            read = await self._read_state(gid, uid, last, latest, rev)
            open_questions = await self._tally.unanswered(self._messages, gid, top=rev)
            return GroupSummary(
                str(gid), group_name(group), latest, read.unread_count, rev, read.mention_count, open_questions
            )

        # A few groups at a time: a user of hundreds of groups does not put hundreds of
        # reads in the database's queue at once, ahead of everyone else's.
        summaries: list[GroupSummary] = []
        failed: list[Exception] = []
        left = iter(groups)

        async def summarise() -> None:
            for group in left:
                if failed:
                    return
                try:
                    summaries.append(await summary(group))
                except Exception as exc:  # the first failure is raised, once the others stop
                    failed.append(exc)

        await asyncio.gather(*(summarise() for _ in range(min(SUMMARIES_AT_ONCE, len(groups)))))
        if failed:
            raise failed[0]
        summaries.sort(key=lambda s: (s.name, s.id))
        return summaries

    # -- messages --

    async def add_message(
        self,
        group_id: str,
        *,
        sender_id: str | None,
        sender_name: str,
        content: str,
        client_msg_id: str | None,
        mentions: Sequence[str] = (),
        kind: str = "message",
        reply_to: dict[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> tuple[Message, bool]:
        send: NewMessage = {
            "sender_id": sender_id, "sender_name": sender_name, "content": content,
            "client_msg_id": client_msg_id, "mentions": mentions, "kind": kind, "reply_to": reply_to,
            "attachments": attachments, "message_id": message_id,
        }
        [answer] = await self.add_messages(group_id, [send])
        if isinstance(answer, StorageUnavailable):
            raise answer
        return answer

    async def add_messages(
        self, group_id: str, sends: Sequence[NewMessage]
    ) -> list[tuple[Message, bool] | StorageUnavailable]:
        """One ordered insert of all of them, numbered from the group's top as this
        process knows it. No read comes first: a repeated ``client_msg_id`` is found
        by its unique index refusing the insert, and a number another process took
        by the ``seq``/``revs`` indexes refusing it (then the top is read and the
        sends not stored yet are numbered again)."""
        if self._client is None:
            raise StorageUnavailable("the MongoDB store is not open")
        gid = oid(group_id)
        docs = [_new_document(gid, send) for send in sends]
        answers: list[tuple[Message, bool] | StorageUnavailable | None] = [None] * len(docs)
        pending = list(range(len(docs)))  # not stored yet, in order
        async with self._writer(str(gid)):
            races = 0
            while pending:
                try:
                    stored, refused = await self._insert_in_order(gid, [docs[i] for i in pending], probe=races > 0)
                except PyMongoError as exc:  # whether the ones in flight were stored is unknown
                    failure = StorageUnavailable(f"MongoDB did not answer: {_short(exc)}")
                    for i in pending:
                        answers[i] = failure
                    break
                for i in pending[:stored]:
                    answers[i] = (to_wire(docs[i]), False)
                if refused is None:
                    break
                first = pending[stored]
                doc = docs[first]
                if await self._lost_race(gid, refused, doc["seq"], doc["rev"], races):
                    races += 1
                    if races == MAX_INSERT_ATTEMPTS:
                        for i in pending[stored:]:
                            answers[i] = StorageUnavailable(f"no free seq after {MAX_INSERT_ATTEMPTS} attempts")
                        break
                    pending = pending[stored:]
                    continue
                answers[first] = await self._stored_before(gid, doc, refused)
                pending = pending[stored + 1 :]
        return [a if a is not None else StorageUnavailable("not stored") for a in answers]

    async def _insert_in_order(
        self, gid: ObjectId, docs: list[dict[str, Any]], *, probe: bool
    ) -> tuple[int, DuplicateKeyError | None]:
        """Number ``docs`` from the group's top and insert them in order: how many were
        stored, and the unique index refusal that stopped the rest (``None``: all stored)."""
        seq, rev = await self._tops(gid, probe=probe)
        stamp = now_ms()
        for k, doc in enumerate(docs, start=1):
            doc.update(seq=seq + k, rev=rev + k, revs=[rev + k], timestamp=stamp)
        stored, refused = len(docs), None
        try:
            if len(docs) == 1:
                await self._messages.insert_one(docs[0])
            else:
                await self._messages.insert_many(docs, ordered=True)
        except DuplicateKeyError as exc:
            stored, refused = 0, exc
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            stored = int(exc.details.get("nInserted", errors[0]["index"]))
            refused = DuplicateKeyError(errors[0].get("errmsg", ""), DUPLICATE_KEY, errors[0])
        if stored:
            self._seqs.remember(gid, docs[stored - 1]["seq"])
            self._revs.remember(gid, docs[stored - 1]["rev"])
        return stored, refused

    async def _stored_before(
        self, gid: ObjectId, doc: dict[str, Any], refused: DuplicateKeyError
    ) -> tuple[Message, bool] | StorageUnavailable:
        """The answer for a send whose insert was refused as a repeat: the first one stored."""
        if duplicate_index(refused) == CLIENT_MSG_INDEX and doc["client_msg_id"] is not None:
            try:
                first = await self._messages.find_one(client_msg_filter(gid, doc["sender_id"], doc["client_msg_id"]))
            except PyMongoError as exc:
                return StorageUnavailable(f"MongoDB did not answer: {_short(exc)}")
            if first is not None:
                return to_wire(first), True
        return StorageUnavailable(f"unexpected duplicate key: {refused}")

    async def _lost_race(self, gid: ObjectId, exc: DuplicateKeyError, seq: int, rev: int, attempt: int) -> bool:
        """Whether a write lost a ``seq`` or ``rev`` race (that number is stored now:
        the next try starts above it, after a short random pause once it keeps losing)."""
        index = duplicate_index(exc)
        if index == SEQ_INDEX:
            self._seqs.remember(gid, seq)
        elif index == REVS_INDEX:
            self._revs.remember(gid, rev)
        else:
            return False
        if attempt >= 2:
            await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
        return True

    @_unavailable
    async def non_members(self, group_id: str, user_ids: Sequence[str]) -> list[str]:
        gid = oid(group_id)
        wanted = [oid(user_id) for user_id in user_ids]
        # Only the asked ids come back, never the whole members array.
        keep = {"$filter": {"input": "$members", "cond": {"$in": ["$$this", wanted]}}}
        doc = await self._db.study_groups.find_one({"_id": gid}, {"members": keep})
        found = doc.get("members") if doc else None
        members = {str(m) for m in found} if isinstance(found, list) else set()
        return [user_id for user_id in user_ids if user_id not in members]

    @_unavailable
    async def get_messages(
        self,
        group_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
        tag: str | None = None,
        latest_seq: int | None = None,
    ) -> tuple[list[Message], bool]:
        gid = oid(group_id)
        if tag is not None:
            return await mongo_conversation.tagged_page(self._messages, gid, tag, limit, before_seq, after_seq)
        if after_seq is not None:
            # One extra row says whether newer ones exist.
            docs = await self.range_cursor(gid, after_seq, after_seq + limit + 1).to_list(None)
            return [to_wire(d) for d in docs[:limit]], len(docs) > limit
        latest = await self._top_seq(gid) if latest_seq is None else latest_seq
        end = latest if before_seq is None else min(before_seq - 1, latest)
        start = max(0, end - limit)
        if end <= start:
            return [], False
        docs = await self.range_cursor(gid, start, end).to_list(None)
        return [to_wire(d) for d in docs], start > 0

    @_unavailable
    async def latest_seq(self, group_id: str) -> int:
        gid = oid_or_none(group_id)
        return 0 if gid is None else await self._top_seq(gid)

    @_unavailable
    async def latest_rev(self, group_id: str) -> int:
        gid = oid_or_none(group_id)
        return 0 if gid is None else await self._top_rev(gid)

    @_unavailable
    async def get_changes(
        self, group_id: str, *, after_rev: int, limit: int
    ) -> tuple[list[Message], bool, int]:
        gid = oid(group_id)
        top = await self._top_rev(gid)
        found: dict[ObjectId, dict[str, Any]] = {}
        above, width = after_rev, limit + 1
        # Windows of the current-rev index, growing past superseded numbers,
        # until one more row than a page is found or the top is reached.
        while above < top and len(found) <= limit:
            upto = min(top, above + width)
            async for doc in self.changes_cursor(gid, above, upto):
                found.pop(doc["_id"], None)  # changed again while paging: keep the later
                found[doc["_id"]] = doc
            above, width = upto, width * 2
        docs = sorted(found.values(), key=lambda d: int(d["rev"]))
        return [to_wire(d) for d in docs[:limit]], len(docs) > limit, top

    @_unavailable
    async def get_message(self, group_id: str, message_id: str) -> Message | None:
        gid, mid = oid_or_none(group_id), oid_or_none(message_id)
        if gid is None or mid is None:
            return None
        doc = await self._messages.find_one({"_id": mid})
        return None if doc is None or doc.get("group_id") != gid else to_wire(doc)

    @_unavailable
    async def edit_message(
        self, group_id: str, message_id: str, sender_id: str, content: str
    ) -> Message | None:
        files = await self.get_message(group_id, message_id)  # their names stay searchable words
        return await self._update_live(
            group_id, message_id, sender_id,
            {"content": content, "edited_at": now_ms(),
             **mongo_search.words_field(content, attachments=files["attachments"] if files else ())},
        )

    @_unavailable
    async def delete_message(
        self, group_id: str, message_id: str, sender_id: str | None, *, deleted_by: str | None = None
    ) -> Message | None:
        gid, mid = oid_or_none(group_id), oid_or_none(message_id)
        if gid is None or mid is None:
            return None
        selector: dict[str, Any] = {"_id": mid, "group_id": gid, "deleted": False}
        if sender_id is not None:
            selector = live_message_filter(mid, gid, oid(sender_id))
        tombstone = {
            "content": "", "deleted": True, "tags": [], "words": [], "mentions": [], "reactions": [],
            "pinned": None, "deleted_by": None if deleted_by is None else oid(deleted_by),
        }
        doc = await self.change(gid, selector, tombstone)
        return None if doc is None else to_wire(doc)

    @_unavailable
    async def react(
        self, group_id: str, message_id: str, user_id: str, emoji: str, on: bool
    ) -> tuple[Message, bool] | None:
        decide = mongo_conversation.reaction_change(user_id, emoji, on)
        return await self._modify(group_id, message_id, decide)

    @_unavailable
    async def pin(
        self, group_id: str, message_id: str, by: str | None
    ) -> tuple[Message, bool] | None:
        decide = await mongo_conversation.pin_change(self._messages, oid(group_id), by)
        return await self._modify(group_id, message_id, decide)

    @_unavailable
    async def set_answer(
        self, group_id: str, question_id: str, answer_id: str | None
    ) -> tuple[Message, bool] | None:
        return await self._modify(group_id, question_id, mongo_conversation.answer_change(answer_id))

    @_unavailable
    async def search_messages(
        self, group_ids: Sequence[str], query: Query, *, limit: int, before_seq: int | None = None
    ) -> tuple[list[Message], bool]:
        return await mongo_search.search(
            self._messages, self._top_seq, group_ids, query, limit=limit, before_seq=before_seq,
            element_ranges=self._element_ranges,
        )

    @_unavailable
    async def open_questions(self, group_id: str, *, latest_rev: int | None = None) -> int:
        return await self._tally.unanswered(self._messages, oid(group_id), top=latest_rev)

    async def _modify(
        self, group_id: str, message_id: str, decide: mongo_conversation.Decide
    ) -> tuple[Message, bool] | None:
        gid, mid = oid_or_none(group_id), oid_or_none(message_id)
        if gid is None or mid is None:
            return None
        return await mongo_conversation.modify(self._messages, self.change, gid, mid, decide)

    # -- read markers --

    @_unavailable
    async def read_state(
        self, group_id: str, user_id: str, *, latest_seq: int | None = None, latest_rev: int | None = None
    ) -> ReadState:
        gid, uid = oid(group_id), oid(user_id)
        doc = await self._markers.find_one({"user_id": uid, "group_id": gid}, {"seq": 1})
        latest = await self._top_seq(gid) if latest_seq is None else latest_seq
        return await self._read_state(gid, uid, 0 if doc is None else int(doc["seq"]), latest, latest_rev)

    @_unavailable
    async def mark_read(self, group_id: str, user_id: str, seq: int) -> ReadState:
        gid, uid = oid(group_id), oid(user_id)
        latest = await self._top_seq(gid)
        target = max(0, min(seq, latest))
        for attempt in range(3):
            try:
                # `$max` makes "never moves back" atomic, whoever else marks at once.
                doc = await self._markers.find_one_and_update(
                    {"user_id": uid, "group_id": gid},
                    {"$max": {"seq": target}},
                    projection={"seq": 1},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                break
            except DuplicateKeyError:
                # Two first marks raced on the upsert; the loser updates the winner's.
                if attempt == 2:
                    raise StorageUnavailable("read marker upsert kept colliding") from None
        last = int(doc["seq"])
        return await self._read_state(gid, uid, last, latest)

    # -- queries (public so tests can explain exactly what runs) --

    def range_cursor(
        self, gid: ObjectId, above: int, upto: int, *, newest_first: bool = False, limit: int = 0
    ) -> AsyncCursor[dict[str, Any]]:
        """Messages with ``above < seq <= upto``: one bounded walk of the seq index."""
        cursor = self._messages.find({"group_id": gid, "seq": {"$gt": above, "$lte": upto}})
        cursor = cursor.sort("seq", DESCENDING if newest_first else ASCENDING)
        return cursor.limit(limit) if limit else cursor

    def seq_probe_cursor(self, gid: ObjectId, seq: int) -> AsyncCursor[dict[str, Any]]:
        """Whether ``seq`` is stored in the group: a point lookup in the seq index."""
        return self._seqs.point_cursor(self._messages, gid, seq)

    def changes_cursor(self, gid: ObjectId, above: int, upto: int) -> AsyncCursor[dict[str, Any]]:
        """Messages whose current ``rev`` is in ``(above, upto]``: one bounded walk of the rev index."""
        query = {"group_id": gid, "rev": {"$gt": above, "$lte": upto}}
        return self._messages.find(query).sort("rev", ASCENDING)

    def rev_window_cursor(self, gid: ObjectId, above: int, upto: int) -> AsyncCursor[dict[str, Any]]:
        """The range probe for the group's top ``rev`` (messages that took a number in the range)."""
        return self._revs.window_cursor(self._messages, gid, above, upto)

    def rev_probe_cursor(self, gid: ObjectId, rev: int) -> AsyncCursor[dict[str, Any]]:
        """Whether ``rev`` was taken in the group: a point lookup in the revs index."""
        return self._revs.point_cursor(self._messages, gid, rev)

    @staticmethod
    def own_unread_filter(gid: ObjectId, uid: ObjectId, last: int, latest: int) -> dict[str, Any]:
        """The reader's own live messages in ``(last, latest]``: with the deleted ones
        (``storage.mongo_tally``), what an unread count subtracts. Every other ``seq``
        there is a live message of someone else (seqs are contiguous), so the count
        walks only the reader's own, which stay few whatever the group's size."""
        return {"group_id": gid, "sender_id": uid, "deleted": False, "seq": {"$gt": last, "$lte": latest}}

    # -- helpers --

    @property
    def _db(self) -> Any:
        assert self._client is not None
        return self._client[self._db_name]

    @property
    def _messages(self) -> Any:
        return self._db.messages

    @property
    def _markers(self) -> Any:
        return self._db.read_markers

    async def _streamed(self, cursor: Any) -> AsyncIterator[dict[str, Any]]:
        """A cursor's documents (or an awaitable of a cursor), driver failures as ``StorageUnavailable``."""
        if self._client is None:
            raise StorageUnavailable("the MongoDB store is not open")
        try:
            if asyncio.iscoroutine(cursor):
                cursor = await cursor
            async with cursor:
                async for doc in cursor:
                    yield doc
        except PyMongoError as exc:
            raise StorageUnavailable(f"MongoDB did not answer: {_short(exc)}") from exc

    def _remember_seq(self, gid: ObjectId, seq: int) -> None:
        self._seqs.remember(gid, seq)

    async def _top_seq(self, gid: ObjectId) -> int:
        """The group's highest stored seq (0 when empty)."""
        return await self._seqs.top(self._messages, gid)

    async def _top_rev(self, gid: ObjectId) -> int:
        """The group's latest revision (0 when none)."""
        return await self._revs.top(self._messages, gid)

    async def _tops(self, gid: ObjectId, *, probe: bool) -> tuple[int, int]:
        """The group's top ``seq`` and ``rev`` for a writer: the highest ones this
        process has seen stored, with no read (a first try, which the unique
        indexes refuse if another process wrote since), or, with ``probe`` or
        when this process has not written here yet, read from the indexes."""
        seq, rev = self._seqs.known(gid), self._revs.known(gid)
        if probe or seq is None or rev is None:
            return await _both(self._top_seq(gid), self._top_rev(gid))
        return seq, rev

    async def _read_state(
        self, gid: ObjectId, uid: ObjectId, last: int, latest: int, rev: int | None = None
    ) -> ReadState:
        """The reader's counts above ``last`` in a group whose top seq is ``latest``
        (and top ``rev`` is ``rev``, when the caller has read it)."""
        if last >= latest:
            return ReadState(last, 0)
        unread, mentioned = await _both(
            self._unread(gid, uid, last, latest, rev),
            mongo_conversation.count_tagged(self._messages, gid, conversation.mention_tag(str(uid)), last),
        )
        return ReadState(last, unread, mentioned)

    async def _unread(self, gid: ObjectId, uid: ObjectId, last: int, latest: int, rev: int | None) -> int:
        own = self.own_unread_filter(gid, uid, last, latest)
        not_others = await _both(
            self._tally.deleted(self._messages, gid, last, latest, top=rev), self._messages.count_documents(own)
        )
        # Two reads, not one snapshot: an own message deleted between them is subtracted
        # twice or not at all (one too few or one too many until the next count).
        return max(0, latest - last - sum(not_others))

    async def _update_live(
        self, group_id: str, message_id: str, sender_id: str, changes: dict[str, Any]
    ) -> Message | None:
        gid, mid, sid = (oid_or_none(x) for x in (group_id, message_id, sender_id))
        if gid is None or mid is None or sid is None:
            return None
        doc = await self.change(gid, live_message_filter(mid, gid, sid), changes)
        return None if doc is None else to_wire(doc)

    async def change(
        self, gid: ObjectId, selector: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply ``changes`` to the one message ``selector`` matches, taking the
        group's next ``rev`` in the same write; the stored document after, or
        ``None`` when nothing matched."""
        async with self._writer(str(gid)):
            for attempt in range(MAX_INSERT_ATTEMPTS):
                known = self._revs.known(gid)
                rev = (known if known is not None and attempt == 0 else await self._top_rev(gid)) + 1
                try:
                    # `$ne`: the unique index cannot refuse a number this same message
                    # took meanwhile (another process's change of it): that must lose too.
                    doc = await self._messages.find_one_and_update(
                        {**selector, "revs": {"$ne": rev}},
                        {"$set": {**changes, "rev": rev}, "$push": {"revs": rev}},
                        return_document=ReturnDocument.AFTER,
                    )
                except DuplicateKeyError as exc:
                    if await self._lost_race(gid, exc, 0, rev, attempt):
                        continue
                    raise StorageUnavailable(f"unexpected duplicate key: {exc}") from exc
                if doc is None and await self._messages.find_one({**selector, "revs": rev}, {"_id": 1}):
                    self._revs.remember(gid, rev)  # lost to a change of this very message
                    continue
                if doc is not None:
                    self._revs.remember(gid, rev)
                return doc
        raise StorageUnavailable(f"no free rev after {MAX_INSERT_ATTEMPTS} attempts")


def _new_document(gid: ObjectId, send: NewMessage) -> dict[str, Any]:
    """A send's message document, without its numbers (``seq``, ``rev``, ``revs``, ``timestamp``)."""
    sender_id, kind, content = send["sender_id"], send.get("kind", "message"), send["content"]
    attachments, mentions = send.get("attachments") or (), send.get("mentions") or ()
    reply_to, message_id = send.get("reply_to"), send.get("message_id")
    doc: dict[str, Any] = {
        "_id": ObjectId(message_id) if message_id else ObjectId(),
        "group_id": gid,
        "kind": kind,
        "sender_id": None if sender_id is None else oid(sender_id),
        "sender": send["sender_name"],
        "content": content,
        "client_msg_id": send["client_msg_id"],
        "edited_at": None,
        "deleted": False,
        **mongo_search.words_field(content, attachments=attachments),
    }
    if attachments:
        doc["attachments"] = [dict(a) for a in attachments]
    if mentions:
        doc["mentions"] = [oid(user_id) for user_id in mentions]
    if reply_to is not None:
        doc["reply_to"] = mongo_conversation.stored_reply(reply_to)
    tags = conversation.tags({"deleted": False, "kind": kind, "sender_id": sender_id, "mentions": mentions})
    if tags:
        doc["tags"] = tags
    return doc


async def _both(first: Coroutine[Any, Any, int], second: Coroutine[Any, Any, int]) -> tuple[int, int]:
    """Two store reads at once; the first failure is raised (after both finished)."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return int(results[0]), int(results[1])  # type: ignore[arg-type]


def _short(exc: BaseException) -> str:
    """The driver's message without the topology dump it appends."""
    text = str(exc).split(", Topology Description:")[0]
    return f"{type(exc).__name__}: {text[:300]}"


def _redacted(uri: str) -> str:
    """The URI without its password, fit for logs."""
    return re.sub(r"(?<=://)([^:@/]*):[^@/]*@", r"\1:***@", uri)
