"""``migrate-legacy-chat`` as operators run it: a real subprocess against the MongoDB-wire server.

Legacy ``study_groups.chat`` arrays of every shape old data holds are copied,
then read back through ``get_history``, the HTTP route and unread counts; a
20k-record array is killed mid-run and resumed; ``--append`` runs beside a
live server taking sends.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
import socketio
from bson import Decimal128, Int64, ObjectId
from pymongo import MongoClient

from server.config import SETTINGS
from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    EVE,
    GROUPS,
    MATHS,
    MESSAGE_FIELDS,
    PHYSICS,
    SECRET,
    USERS,
    ChatClient,
    make_token,
)
from tests.support.mongo import secantus_uri, seed_mongo
from tests.support.nodes import ROOT, Node
from tests.support.ports import free_port

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
T0_S = int(T0.timestamp())
GHOST = "65a0000000000000000000ee"  # a valid id with no users document
EMPTY_GROUP = "65b0000000000000000000b1"
BROKEN_GROUP = "65b0000000000000000000b2"


@pytest.fixture
def backend() -> str:
    """The ``store``/``server`` fixtures run on MongoDB here."""
    return "mongo"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Index → record, and what each becomes: (content, sender_id, sender, timestamp) or a skip reason.
SHAPES: list[tuple[Any, Any]] = [
    ({"sender": "First", "sender_id": ObjectId(ANA), "content": "no timestamp, first in the array"},
     ("no timestamp, first in the array", ANA, "Ana García", at(0))),  # borrows the next one's time
    ({"sender": "Ana (old name)", "sender_id": ObjectId(ANA), "content": "hola", "timestamp": at(0)},
     ("hola", ANA, "Ana García", at(0))),
    ({"sender": "Ben", "sender_id": BEN.upper(), "content": "uppercase hex id", "timestamp": "2024-03-01T09:01:00Z"},
     ("uppercase hex id", BEN, "Ben Okafor", at(1))),
    ({"sender": "C.", "sender_id": CAROL, "content": "epoch ms", "timestamp": (T0_S + 120) * 1000},
     ("epoch ms", CAROL, "Carol", at(2))),
    ({"sender": "Ghost", "sender_id": GHOST, "content": "id without a user", "timestamp": T0_S + 180},
     ("id without a user", GHOST, "Ghost", at(3))),
    ({"sender": "Bad Id", "sender_id": "not-an-id", "content": "malformed id",
      "timestamp": "2024-03-01T10:04:00+01:00"},
     ("malformed id", None, "Bad Id", at(4))),
    ({"sender": "Numbered", "sender_id": 42, "content": "numeric id", "timestamp": T0_S + 300.5},
     ("numeric id", None, "Numbered", T0 + timedelta(seconds=300.5))),
    ({"sender": "No Id", "content": "missing id, missing timestamp"},
     ("missing id, missing timestamp", None, "No Id", T0 + timedelta(seconds=300.5))),  # after its neighbour
    ({"sender": "  Spaced  ", "sender_id": None, "content": "null id, naive time", "timestamp": "2024-03-01 09:07:00"},
     ("null id, naive time", None, "Spaced", at(7))),
    ({"sender_id": ANA, "content": ""}, "empty content"),
    ({"sender_id": BEN, "content": " \n\t\u3000"}, "empty content"),
    ({"sender_id": BEN, "sender": "Ben"}, "empty content"),
    ({"sender_id": BEN, "content": 12345}, "content is not text (number)"),
    ("just a string", "not a document (string)"),
    (None, "not a document (null)"),
    ({"sender_id": CAROL, "content": "unparseable time", "timestamp": "yesterday"},
     ("unparseable time", CAROL, "Carol", at(7))),  # the nearest earlier usable time is record 8's
    ({"sender_id": ANA, "content": "a day earlier", "timestamp": at(-24 * 60)},
     ("a day earlier", ANA, "Ana García", at(-24 * 60))),
    ({"sender_id": ANA, "content": "boolean time", "timestamp": True},
     ("boolean time", ANA, "Ana García", at(-24 * 60))),
    ({"sender_id": {"$oid": ANA}, "sender": "Dict Id", "content": "a document as id", "timestamp": at(8)},
     ("a document as id", None, "Dict Id", at(8))),
    ({"sender_id": ObjectId(DAN), "content": "no sender string", "timestamp": at(9)},
     ("no sender string", DAN, "Dan Wu", at(9))),
    ({"sender_id": "bad", "content": "no name at all", "timestamp": at(10)},
     ("no name at all", None, "", at(10))),
    ({"sender_id": ObjectId(EVE), "content": "no user, no name", "timestamp": at(11)},
     ("no user, no name", EVE, EVE, at(11))),
    # A BSON date past 9999 would be the same, but SecantusDB refuses to store one.
    ({"sender_id": BEN, "content": "date past 9999", "timestamp": 1e20},
     ("date past 9999", BEN, "Ben Okafor", at(11))),
    ({"sender_id": CAROL, "content": "micro\u00adseconds ✓", "timestamp": "2024-03-01T09:12:00.123456Z"},
     ("micro\u00adseconds ✓", CAROL, "Carol", T0 + timedelta(minutes=12, milliseconds=123))),
    ({"sender": "Dec", "content": "decimal seconds", "timestamp": Decimal128(str(T0_S + 780))},
     ("decimal seconds", None, "Dec", at(13))),
    ({"sender_id": BEN, "content": "  kept exactly  ", "timestamp": Int64((T0_S + 840) * 1000)},
     ("  kept exactly  ", BEN, "Ben Okafor", at(14))),
    ({"sender": "Digits", "content": "a string of digits", "timestamp": f" {T0_S + 900} "},
     ("a string of digits", None, "Digits", at(15))),
]
EXPECTED_ORDER = [16, 17, 0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 18, 19, 20, 21, 22, 23, 24, 25, 26]
BAD = [i for i, (_, want) in enumerate(SHAPES) if isinstance(want, str)]
GOOD = len(SHAPES) - len(BAD)


def shapes_chat() -> list[Any]:
    return [record for record, _ in SHAPES]


def cli_env(uri: str, db_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return {**env, "MONGODB_URI": uri, "MONGODB_DB": db_name}


def migrate(uri: str, db_name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "migrate-legacy-chat", *args],
        cwd=ROOT, env=cli_env(uri, db_name), capture_output=True, text=True, timeout=timeout,
    )


def group_line(group_id: str, name: str, copied: int, skipped: int, present: int) -> str:
    return f"group {group_id} ({name}): copied {copied}, skipped {skipped}, already present {present}"


def shape_report(present: int = 0) -> list[str]:
    # Bad records are reported in migration order: 9–14 all sit after record 8.
    reasons = {i: want for i, (_, want) in enumerate(SHAPES) if isinstance(want, str)}
    lines = [f"group {MATHS} record {i}: skipped: {reasons[i]}" for i in sorted(reasons)]
    return [*lines, group_line(MATHS, "Maths", GOOD - present, len(BAD), present)]


def stored(db: Any, group_id: str) -> list[dict[str, Any]]:
    return list(db.messages.find({"group_id": ObjectId(group_id)}).sort("seq", 1))


def seed_sync(db: Any) -> None:
    db.users.insert_many([
        {"_id": ObjectId(u), **({"full_name": f} if f is not None else {}), **({"last_name": ln} if ln else {})}
        for u, f, ln in USERS
    ])
    db.study_groups.insert_many([
        {"_id": ObjectId(g), "name": name, "members": [ObjectId(m) for m in members]} for g, name, members in GROUPS
    ])


@pytest.fixture
def db(mongo_uri, mongo_db_name):
    with MongoClient(mongo_uri, tz_aware=True) as client:
        yield client[mongo_db_name]


# -- every shape, read back through the server --


async def test_every_record_shape_is_copied_in_order_and_reads_back_like_any_message(
    store, server_url, connect, mongo_uri, mongo_db_name, db
):
    db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": shapes_chat()}})

    result = migrate(mongo_uri, mongo_db_name)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *shape_report(),
        f"total: copied {GOOD}, skipped {len(BAD)}, already present 0 in 1 group",
    ]
    assert result.stderr == ""  # no progress bar off a terminal

    expected = [SHAPES[i][1] for i in EXPECTED_ORDER]
    ana = await connect(ANA)
    ack = await ana.call("get_history", {"group_id": MATHS, "limit": 100})
    assert ack["ok"] and ack["has_more"] is False, ack
    messages = ack["messages"]
    assert [(m["content"], m["sender_id"], m["sender"], m["timestamp"]) for m in messages] == [
        (content, sender_id, sender, iso(moment)) for content, sender_id, sender, moment in expected
    ]
    for seq, message in enumerate(messages, start=1):
        assert set(message) == MESSAGE_FIELDS
        assert re.fullmatch(r"[0-9a-f]{24}", message["id"])
        assert (message["type"], message["seq"], message["rev"], message["group_id"]) == ("message", seq, seq, MATHS)
        assert message["sender_name"] == message["sender"]
        assert (message["client_msg_id"], message["edited_at"], message["deleted"]) == (None, None, False)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/study-groups/{MATHS}/messages?limit=100",
                            headers={"Authorization": f"Bearer {make_token(CAROL)}"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True, "messages": messages, "has_more": False}
        async with http.get(f"{server_url}/study-groups/{MATHS}/messages?limit=5&before_seq=4",
                            headers={"Authorization": f"Bearer {make_token(BEN)}"}) as resp:
            assert (await resp.json())["messages"] == messages[:3]

    # Migrated messages count as unread like any other; a reader's own do not.
    own = sum(1 for m in messages if m["sender_id"] == ANA)
    groups = (await ana.call("list_groups"))["groups"]
    maths = next(g for g in groups if g["id"] == MATHS)
    assert maths == {"id": MATHS, "name": "Maths", "latest_seq": GOOD, "latest_rev": GOOD,
                     "unread_count": GOOD - own, "mention_count": 0, "open_questions": 0}
    # And the history goes on from there.
    sent = await ana.call("send_message", {"group_id": MATHS, "content": "first message on the new server"})
    assert sent["message"]["seq"] == GOOD + 1
    # Migrated messages of a resolved sender are theirs to edit.
    edited = await ana.call("edit_message", {"group_id": MATHS, "message_id": messages[0]["id"], "content": "fixed"})
    assert edited["ok"] and edited["message"]["seq"] == 1, edited
    # The legacy array itself is never touched.
    assert db.study_groups.find_one({"_id": ObjectId(MATHS)})["chat"][1]["content"] == "hola"


def test_dry_run_reports_the_same_writes_nothing_and_a_second_run_copies_nothing(mongo_uri, mongo_db_name, db):
    seed_sync(db)
    db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": shapes_chat()}})
    physics_chat = [{"sender_id": ObjectId(CAROL), "content": f"p{i}", "timestamp": at(i)} for i in range(3)]
    db.study_groups.update_one({"_id": ObjectId(PHYSICS)}, {"$set": {"chat": physics_chat}})
    db.study_groups.insert_many([
        {"_id": ObjectId(EMPTY_GROUP), "name": "Empty", "members": [], "chat": []},
        {"_id": ObjectId(BROKEN_GROUP), "name": "Broken", "members": [], "chat": "not an array"},
        {"_id": ObjectId(), "name": "New design", "members": []},  # no chat: not listed
    ])
    report = [
        *shape_report(),
        group_line(PHYSICS, "Physics", 3, 0, 0),
        group_line(EMPTY_GROUP, "Empty", 0, 0, 0),
        f"group {BROKEN_GROUP} (Broken): skipped: chat is not an array (string)",
        f"total: copied {GOOD + 3}, skipped {len(BAD)}, already present 0 in 3 groups; 1 group skipped",
    ]
    before = db.study_groups.find_one({"_id": ObjectId(MATHS)})

    dry = migrate(mongo_uri, mongo_db_name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["dry run: nothing is written; the numbers are what a run would do now", *report]
    assert "messages" not in db.list_collection_names()  # not even an index

    first = migrate(mongo_uri, mongo_db_name)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == report
    assert [m["seq"] for m in stored(db, PHYSICS)] == [1, 2, 3]

    again = migrate(mongo_uri, mongo_db_name)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        *shape_report(present=GOOD),
        group_line(PHYSICS, "Physics", 0, 0, 3),
        group_line(EMPTY_GROUP, "Empty", 0, 0, 0),
        f"group {BROKEN_GROUP} (Broken): skipped: chat is not an array (string)",
        f"total: copied 0, skipped {len(BAD)}, already present {GOOD + 3} in 3 groups; 1 group skipped",
    ]
    assert len(stored(db, MATHS)) == GOOD
    assert db.study_groups.find_one({"_id": ObjectId(MATHS)}) == before


async def test_a_group_with_server_messages_is_skipped_unless_append(store, mongo_uri, mongo_db_name, db):
    await store.open()
    try:
        for text in ("sent on the new server", "and another"):
            await store.add_message(MATHS, sender_id=BEN, sender_name="Ben Okafor", content=text, client_msg_id=None)
    finally:
        await store.close()
    chat = [{"sender_id": ObjectId(ANA), "content": f"old {i}", "timestamp": at(i)} for i in range(3)]
    db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": chat}})
    db.study_groups.update_one({"_id": ObjectId(PHYSICS)}, {"$set": {"chat": chat}})

    plain = migrate(mongo_uri, mongo_db_name, "--group", MATHS.upper())
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        f"group {MATHS} (Maths): skipped: 2 messages were already sent through the server; "
        "--append numbers the legacy chat after them",
        "total: copied 0, skipped 0, already present 0 in 0 groups; 1 group skipped",
    ]
    assert [m["content"] for m in stored(db, MATHS)] == ["sent on the new server", "and another"]
    assert stored(db, PHYSICS) == []  # --group: only that group

    appended = migrate(mongo_uri, mongo_db_name, "--group", MATHS, "--append")
    assert appended.returncode == 0, appended.stderr
    assert appended.stdout.splitlines()[0] == group_line(MATHS, "Maths", 3, 0, 0)
    assert [(m["seq"], m["content"]) for m in stored(db, MATHS)] == [
        (1, "sent on the new server"), (2, "and another"), (3, "old 0"), (4, "old 1"), (5, "old 2"),
    ]
    # A group with migrated messages only is an interrupted run, not "server messages".
    again = migrate(mongo_uri, mongo_db_name, "--group", MATHS, "--append")
    assert again.stdout.splitlines()[0] == group_line(MATHS, "Maths", 0, 0, 3)


def test_bad_arguments_and_an_unreachable_server_fail_clearly(mongo_uri, mongo_db_name, db):
    seed_sync(db)
    not_an_id = migrate(mongo_uri, mongo_db_name, "--group", "maths")
    assert not_an_id.returncode == 2
    assert "--group must be a 24-hex group id" in not_an_id.stderr
    unknown = migrate(mongo_uri, mongo_db_name, "--group", "65b0000000000000000000ff")
    assert unknown.returncode == 2
    assert "no such study group" in unknown.stderr

    down = secantus_uri(free_port(), serverSelectionTimeoutMS=300)
    unreachable = migrate(down, mongo_db_name)
    assert unreachable.returncode == 1
    assert "could not be opened" in unreachable.stderr and "Traceback" not in unreachable.stderr

    memory = subprocess.run([sys.executable, "-m", "server", "migrate-legacy-chat"], cwd=ROOT,
                            env=cli_env("memory://", "x"), capture_output=True, text=True, timeout=30)
    assert memory.returncode == 2 and "needs MONGODB_URI" in memory.stderr


def test_a_progress_bar_on_a_terminal(mongo_uri, mongo_db_name, db):
    seed_sync(db)
    chat = [{"sender_id": ObjectId(ANA), "content": f"m{i}", "timestamp": at(i)} for i in range(1200)]
    db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": chat}})
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "server", "migrate-legacy-chat"], cwd=ROOT,
                                env=cli_env(mongo_uri, mongo_db_name), stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = terminal.decode(errors="replace")
    assert "Maths [" in text and "] 500/1200" in text and "] 1200/1200 (100%)" in text
    assert text.endswith("\r\x1b[K")  # the bar is cleared, not left behind
    assert stdout.splitlines()[0] == group_line(MATHS, "Maths", 1200, 0, 0)


# -- a large array, killed mid-run and resumed --

LARGE = 20_000


def large_chat() -> tuple[list[Any], list[int], set[int]]:
    """20k records with shuffled times, some missing, some bad; and the order they must land in."""
    chat: list[Any] = []
    keys = []
    bad = set()
    for i in range(LARGE):
        seconds = (i * 7919) % LARGE  # a permutation: array order is not time order
        record: dict[str, Any] = {"sender": f"user {i % 7}", "sender_id": str(ObjectId()) if i % 3 else i,
                                  "content": f"message {i} " + "x" * 40, "timestamp": T0_S + seconds}
        if i % 1000 == 999:
            del record["timestamp"]  # right after record i - 1
            seconds = (((i - 1) * 7919) % LARGE)
        if i % 997 == 5:
            record["content"] = "   "
            bad.add(i)
        chat.append(record)
        keys.append((seconds, i))
    order = [i for _, i in sorted(keys) if i not in bad]
    return chat, order, bad


def start_migration(uri: str, db_name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "server", "migrate-legacy-chat"], cwd=ROOT,
                            env=cli_env(uri, db_name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_when_stored(proc: subprocess.Popen[str], db: Any, count: int, sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig`` once ``count`` messages are stored; the process's output."""
    try:
        deadline = time.monotonic() + 60
        while db.messages.estimated_document_count() < count:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the migration made no progress"
            time.sleep(0.05)
        proc.send_signal(sig)
        output = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    # The database finishes a batch whose writer it lost: wait for it to land.
    counts = [-1]
    while counts[-3:] != [counts[-1]] * 3:
        time.sleep(0.2)
        counts.append(db.messages.estimated_document_count())
    return output


def assert_prefix(db: Any, order: list[int]) -> int:
    """Stopped anywhere, a run leaves a prefix of the final order, numbered from 1."""
    done = stored(db, MATHS)
    assert 0 < len(done) < len(order)
    assert [m["seq"] for m in done] == list(range(1, len(done) + 1))
    assert [m["legacy"]["index"] for m in done] == order[:len(done)]
    return len(done)


@pytest.mark.serial  # thousands of database writes: alone, or a loaded machine times it out
@pytest.mark.timeout(120)
def test_a_large_array_streams_and_interrupted_runs_resume_without_copying_twice(mongo_uri, mongo_db_name, db):
    seed_sync(db)
    chat, order, bad = large_chat()
    db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": chat}})
    total = len(order)

    # Ctrl-C: a clean stop with a hint.
    proc = start_migration(mongo_uri, mongo_db_name)
    _, stderr = stop_when_stored(proc, db, 1500, signal.SIGINT)
    assert proc.returncode == 130
    assert "interrupted" in stderr and "run the command again to resume" in stderr and "Traceback" not in stderr
    first = assert_prefix(db, order)

    # A real kill of the resumed run, mid-write.
    proc = start_migration(mongo_uri, mongo_db_name)
    stop_when_stored(proc, db, first + 3000, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    done = assert_prefix(db, order)
    assert done >= first + 3000

    resumed = migrate(mongo_uri, mongo_db_name, timeout=90)

    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[-2] == group_line(MATHS, "Maths", total - done, len(bad), done)
    assert sorted(int(line.split()[3].rstrip(":")) for line in lines[:-2]) == sorted(bad)
    final = stored(db, MATHS)
    assert [m["seq"] for m in final] == list(range(1, total + 1))
    assert [m["legacy"]["index"] for m in final] == order
    times = [m["timestamp"] for m in final]
    assert times == sorted(times)
    assert all(m["content"] == chat[m["legacy"]["index"]]["content"] for m in final)


# -- --append beside a live server --


@pytest.mark.timeout(120)
async def test_append_beside_live_sends_keeps_seqs_contiguous_and_everything_once(
    mongo_uri, mongo_db_name, db, tmp_path
):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    env = {"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET}
    node = Node(env, tmp_path, "live").start()
    made: list[socketio.AsyncClient] = []

    async def client(user_id: str) -> ChatClient:
        sio = socketio.AsyncClient(reconnection=False)
        made.append(sio)
        chat_client = ChatClient(sio, user_id)
        await sio.connect(node.url, auth={"token": make_token(user_id)}, transports=["websocket"], wait_timeout=10)
        return chat_client

    try:
        ana, ben, carol = await client(ANA), await client(BEN), await client(CAROL)
        await carol.call("join_group", {"group_id": MATHS})
        for i in range(3):
            assert (await ana.call("send_message", {"group_id": MATHS, "content": f"before {i}"}))["ok"]
        legacy = 4000
        chat = [{"sender_id": ObjectId(BEN), "content": f"old {i}", "timestamp": T0_S + i} for i in range(legacy)]
        db.study_groups.update_one({"_id": ObjectId(MATHS)}, {"$set": {"chat": chat}})

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "migrate-legacy-chat", "--append", cwd=ROOT,
            env=cli_env(mongo_uri, mongo_db_name), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        migrated = {"legacy.index": {"$gte": 0}}
        while db.messages.count_documents(migrated) == 0:
            assert proc.returncode is None
            await asyncio.sleep(0.02)
        acks = []
        for i in range(40):
            sender = ana if i % 2 else ben
            acks.append(sender.call("send_message", {"group_id": MATHS, "content": f"live {i}",
                                                     "client_msg_id": f"live-{i}"}))
            if i % 4 == 3:
                await asyncio.sleep(0.05)
        acks = await asyncio.gather(*acks)
        running_after_sends = proc.returncode is None
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, stderr.decode()
        assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]]
        assert running_after_sends, "the migration ended before the live sends: nothing was tested"
        assert stdout.decode().splitlines()[0] == group_line(MATHS, "Maths", legacy, 0, 0)

        final = stored(db, MATHS)
        total = 3 + legacy + 40
        assert [m["seq"] for m in final] == list(range(1, total + 1))
        assert [m["content"] for m in final[:3]] == ["before 0", "before 1", "before 2"]
        legacy_seqs = [m["seq"] for m in final if "legacy" in m]
        assert [m["legacy"]["index"] for m in final if "legacy" in m] == list(range(legacy))
        live = {m["client_msg_id"]: m["seq"] for m in final if m.get("client_msg_id")}
        assert sorted(live) == sorted(f"live-{i}" for i in range(40))
        assert {ack["message"]["client_msg_id"]: ack["message"]["seq"] for ack in acks} == live
        # The sends really landed in the middle of the migration.
        assert any(min(legacy_seqs) < seq < max(legacy_seqs) for seq in live.values())
        # Carol saw every live send once, in seq order.
        await carol.wait_event("message", 40)
        seen = [m["seq"] for m in carol.events("message") if m["content"].startswith("live")]
        assert seen == sorted(live.values())

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/study-groups/{MATHS}/messages?limit=100",
                                headers={"Authorization": f"Bearer {make_token(CAROL)}"}) as resp:
                page = await resp.json()
        assert [m["seq"] for m in page["messages"]] == list(range(total - 99, total + 1))
        assert page["has_more"] is True
    finally:
        for sio in made:
            if sio.connected:
                await sio.disconnect()
        node.stop()
