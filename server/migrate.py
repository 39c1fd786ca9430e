"""``migrate-legacy-chat``: copy the embedded ``study_groups.chat`` arrays into ``messages``.

Rules, and why (``docs/migration.md`` says the same for operators):

- Order. A group's records become messages in order of ``(timestamp, array
  index)``. A record without a usable timestamp borrows the one of the nearest
  earlier record that has one (so it stays right after that neighbour); records
  before the first timestamped one borrow that first one's (so they stay right
  before it); in an array with no usable timestamp at all, every record gets
  the time of the run and array order decides. The borrowed time is also the
  message's ``timestamp``, so ``seq`` and ``timestamp`` grow together.
- Timestamps: a BSON date; an ISO 8601 string (``Z``, an offset, or none,
  meaning UTC); a number or a string of digits as Unix time, in milliseconds
  when its magnitude is at least 1e11 (March 1973 in ms, year 5138 in seconds)
  and in seconds below that. Anything else, or a time outside years 1–9999,
  counts as missing. Kept to the millisecond.
- Senders: ``sender_id`` is usable when it is an ObjectId or a 24-hex string
  (either case, surrounding blanks ignored); anything else gives
  ``sender_id: null``. The name comes from ``users`` when the id has a
  document there, else from the record's ``sender`` string, else the id (as for
  any user without a name), else ``""``.
- Skipped, and reported with group and array index: a record that is not a
  document, and content that is missing, not a string, or blank.
- Marking. Each migrated message carries ``legacy: {index: <array index>}``; a
  unique partial index on ``(group_id, legacy.index)`` refuses a second copy
  even from two runs at once. A record whose index is there is "already
  present". This assumes the old application only ever appended to the array
  (an array rewritten in between is not detected).
- Server messages are the group's messages without that marker (``latest_seq``
  minus the marked count, seqs being contiguous). A group holding any is
  skipped unless ``--append``; a group holding only marked ones is an
  interrupted run and simply continues. The check is made once per group, at
  its start.
- Numbering and resuming. Messages are written in the order above through
  ``LegacyMongoStore.add_migrated_messages``, the server's own numbering (next seq
  above the stored top, unique index, retry), so live sends from running
  servers interleave with contiguous seqs. Writing in order means an
  interrupted run has stored a prefix of that order (a killed run's last
  batch may still land after it died), so the next run skips it and numbers
  the rest after it. Without server messages that is 1..n.
- Memory. The array is never loaded whole: an ``$unwind`` cursor streams
  ``(index, timestamp)`` pairs, of which one int per record is kept (about 40
  bytes; a 16 MB document holds well under a million records) and sorted
  here, since the borrowing rule is applied here in array order; the indexes already migrated
  are one bit each; records are then fetched ``CHUNK`` at a time by index
  (``$map`` of ``$arrayElemAt``).
- Pacing. Each ``WRITE_BATCH`` is one ordered ``insert_many`` that holds the
  group's top while it runs; a short pause after it lets live sends that lost
  a seq race get in (on SecantusDB, batches of 500 made live sends wait up to
  a second; 100 keeps them near 70 ms at the same total speed).

Output (stdout): a line per skipped record, ``group <id> (<name>): copied N,
skipped M, already present K`` per group, then a total. A progress bar goes
to stderr on a terminal only. ``--dry-run`` prints the same, writing nothing
(not even indexes). Exit status: 0 done; 1 MongoDB unreachable or failing
mid-run (run again to resume); 2 bad usage (``--group`` not an id or not a
group, ``MONGODB_URI`` not MongoDB).
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from storage.base import ID_RE, StorageUnavailable, now_ms
from storage.mongo_legacy import LegacyGroup, LegacyMessage, LegacyMongoStore

from .config import Settings

CHUNK = 500  # records fetched and checked at a time
WRITE_BATCH = 100  # records per insert: a batch holds the group's top while it is written
PAUSE_S = 0.01  # after each written batch, room for live sends
EPOCH_MS_FROM = 1e11  # a Unix time at least this large is in milliseconds
INDEX_BITS = 32  # an order key packs (timestamp ms, array index) into one int
INDEX_MASK = (1 << INDEX_BITS) - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass
class GroupReport:
    id: str
    name: str
    copied: int = 0
    skipped: int = 0
    present: int = 0
    skipped_group: str | None = None  # why the whole group was left alone

    def line(self) -> str:
        head = f"group {self.id} ({self.name})"
        if self.skipped_group:
            return f"{head}: skipped: {self.skipped_group}"
        return f"{head}: copied {self.copied}, skipped {self.skipped}, already present {self.present}"


async def run_migration(
    settings: Settings,
    *,
    dry_run: bool,
    group: str | None,
    append: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the command; the return value is the process exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    if settings.mongodb_uri.startswith("memory://"):
        print("error: migrate-legacy-chat needs MONGODB_URI to name a MongoDB server", file=err)
        return 2
    if group is not None and not ID_RE.fullmatch(group):
        print(f"error: --group must be a 24-hex group id, not {group!r}", file=err)
        return 2
    store = LegacyMongoStore(settings.mongodb_uri, settings.mongodb_db)
    try:
        await store.open(create_indexes=not dry_run)
    except StorageUnavailable as exc:
        print(f"error: {exc}", file=err)
        return 1
    try:
        groups = await store.legacy_groups(None if group is None else group.lower())
        if group is not None and not groups:
            print(f"error: --group {group}: no such study group in database {settings.mongodb_db!r}",
                  file=err)
            return 2
        if not dry_run:
            await store.ensure_legacy_index()
        migration = Migration(store, dry_run=dry_run, append=append, out=out, progress=Progress(err))
        return await migration.run(groups)
    except StorageUnavailable as exc:
        print(f"error: {exc}; what was copied stays: run the command again to resume", file=err)
        return 1
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task. Ending normally here makes it
        # return the status instead of raising KeyboardInterrupt with a traceback.
        print("\ninterrupted: what was copied stays: run the command again to resume", file=err)
        return 130
    finally:
        await store.close()


class Migration:
    """One run over some groups, printing as it goes."""

    def __init__(self, store: LegacyMongoStore, *, dry_run: bool, append: bool, out: TextIO,
                 progress: Progress) -> None:
        self.store = store
        self.dry_run = dry_run
        self.append = append
        self.out = out
        self.progress = progress
        self.names: dict[str, str | None] = {}  # sender id -> users display name, None: no document

    async def run(self, groups: list[LegacyGroup]) -> int:
        if self.dry_run:
            self.say("dry run: nothing is written; the numbers are what a run would do now")
        reports = []
        for group in groups:
            report = await self.group(group)
            self.say(report.line())
            reports.append(report)
        done = [r for r in reports if not r.skipped_group]
        total = (f"total: copied {sum(r.copied for r in done)}, skipped {sum(r.skipped for r in done)}, "
                 f"already present {sum(r.present for r in done)} in {_groups(len(done))}")
        if len(done) < len(reports):
            total += f"; {_groups(len(reports) - len(done))} skipped"
        self.say(total)
        return 0

    async def group(self, group: LegacyGroup) -> GroupReport:
        report = GroupReport(group.id, group.name)
        if group.chat == "missing":
            report.skipped_group = "no legacy chat"
            return report
        if group.chat != "array":
            report.skipped_group = f"chat is not an array ({group.chat})"
            return report
        present = Bits(group.length)
        async for index in self.store.legacy_indexes(group.id):
            present.add(index)
        server_sent = await self.store.latest_seq(group.id) - present.count
        if server_sent > 0 and not self.append:
            report.skipped_group = (f"{server_sent} messages were already sent through the server; "
                                    "--append numbers the legacy chat after them")
            return report
        keys = await self.order(group.id)
        total = len(keys)
        try:
            for start in range(0, total, CHUNK):
                await self.chunk(group, keys[start:start + CHUNK], present, report)
                self.progress.show(f"{group.name or group.id}", min(start + CHUNK, total), total)
        finally:
            self.progress.clear()
        return report

    async def order(self, group_id: str) -> list[int]:
        """Every record's order key, ``(timestamp ms << 32) | index``, sorted (see the rules)."""
        keys: list[int] = []
        leading: list[int] = []  # indexes before the first usable timestamp
        last: int | None = None
        async for index, raw in self.store.legacy_timestamps(group_id):
            ms = timestamp_ms(raw)
            if ms is None:
                if last is None:
                    leading.append(index)
                    continue
                ms = last
            else:
                last = ms
                keys.extend(_key(ms, i) for i in leading)
                leading.clear()
            keys.append(_key(ms, index))
        if leading:
            run_ms = (now_ms() - EPOCH) // timedelta(milliseconds=1)
            keys.extend(_key(run_ms, i) for i in leading)
        keys.sort()
        return keys

    async def chunk(self, group: LegacyGroup, keys: list[int], present: Bits, report: GroupReport) -> None:
        todo = [k for k in keys if k & INDEX_MASK not in present]
        report.present += len(keys) - len(todo)
        records = await self.store.legacy_records(group.id, [k & INDEX_MASK for k in todo])
        await self._learn_names(records)
        batch: list[LegacyMessage] = []
        for key, record in zip(todo, records):
            index, ms = key & INDEX_MASK, key >> INDEX_BITS
            problem = record_problem(record)
            if problem:
                report.skipped += 1
                self.say(f"group {group.id} record {index}: skipped: {problem}")
                continue
            sender_id = usable_id(record.get("sender_id"))
            batch.append(LegacyMessage(
                legacy_index=index,
                sender_id=sender_id,
                sender_name=self._name(sender_id, record.get("sender")),
                content=record["content"],
                timestamp=EPOCH + timedelta(milliseconds=ms),
            ))
        if not batch:
            return
        if self.dry_run:
            report.copied += len(batch)
            return
        for start in range(0, len(batch), WRITE_BATCH):
            stored, already = await self.store.add_migrated_messages(group.id, batch[start:start + WRITE_BATCH])
            report.copied += stored
            report.present += len(already)
            await asyncio.sleep(PAUSE_S)

    async def _learn_names(self, records: list[Any]) -> None:
        wanted = {
            sid for r in records if isinstance(r, dict)
            and (sid := usable_id(r.get("sender_id"))) is not None and sid not in self.names
        }
        if wanted:
            users = await self.store.get_users(wanted)
            for sid in wanted:
                user = users.get(sid)
                self.names[sid] = None if user is None else user.name

    def _name(self, sender_id: str | None, stored: Any) -> str:
        if sender_id is not None and self.names.get(sender_id):
            return self.names[sender_id] or ""
        if isinstance(stored, str) and stored.strip():
            return stored.strip()
        return sender_id or ""

    def say(self, line: str) -> None:
        self.progress.clear()
        print(line, file=self.out, flush=True)


class Bits:
    """A set of array indexes in one bit each (a group may hold many thousands)."""

    def __init__(self, size: int = 0) -> None:
        self.data = bytearray((size + 7) // 8)
        self.count = 0

    def add(self, index: int) -> None:
        byte, bit = index >> 3, 1 << (index & 7)
        if byte >= len(self.data):
            self.data.extend(bytes(byte + 1 - len(self.data)))
        if not self.data[byte] & bit:
            self.data[byte] |= bit
            self.count += 1

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self.data) and bool(self.data[byte] & (1 << (index & 7)))


class Progress:
    """A one-line bar on ``stream`` when it is a terminal; nothing otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.shown = False

    def show(self, label: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = self.WIDTH * done // total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{label[:30]} [{bar}] {done}/{total} ({100 * done // total}%)")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def record_problem(record: Any) -> str | None:
    """Why a legacy record cannot become a message, or None."""
    if not isinstance(record, dict):
        return f"not a document ({_type_name(record)})"
    content = record.get("content")
    if content is None:
        return "empty content"
    if not isinstance(content, str):
        return f"content is not text ({_type_name(content)})"
    if not content.strip():
        return "empty content"
    return None


def usable_id(value: Any) -> str | None:
    """A legacy ``sender_id`` as a lowercase 24-hex id, or None when it is not one."""
    if isinstance(value, str) and ID_RE.fullmatch(value.strip()):
        return value.strip().lower()
    return None


def timestamp_ms(value: Any) -> int | None:
    """A legacy timestamp as Unix milliseconds, or None when it is not usable (see the rules)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _epoch_ms(value)
    if isinstance(value, str):
        text = value.strip()
        if NUMBER_RE.fullmatch(text):
            return _epoch_ms(float(text))
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return (value - EPOCH) // timedelta(milliseconds=1)
    except OverflowError:
        return None


def _epoch_ms(number: float) -> int | None:
    if not math.isfinite(number):
        return None
    ms = math.floor(number if abs(number) >= EPOCH_MS_FROM else number * 1000)
    return ms if MIN_MS <= ms <= MAX_MS else None


def _groups(count: int) -> str:
    return f"{count} group" if count == 1 else f"{count} groups"


def _key(ms: int, index: int) -> int:
    return (ms << INDEX_BITS) | index


def _type_name(value: Any) -> str:
    names = {dict: "document", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)
