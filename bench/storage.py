"""Per-send storage cost with a group's history at 1k vs 50k messages, on a MongoDB-wire server.

Three ways to store one send, each timed one send at a time on the same server:

``direct``  two plain driver calls: ``insert_one`` of the message document and ``find_one`` of it
            by ``_id`` (the floor; ratios are against this, so the DB server's speed cancels out).
``this``    the store calls this server's ``send_message`` makes: ``MongoStore.get_group``
            (membership) then ``MongoStore.add_message`` (next seq, insert).
``legacy``  the design this product replaces: ``$push`` onto the ``chat`` array embedded in the
            group document, then read the whole group back. Its cost grows with history, and the
            group document hits the 16 MiB BSON cap (found exactly, and tested with --break-test).

Run by the harness as ``python -m bench.storage --uri ... --db-pid PID --out FILE``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import bson
from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import PyMongoError

from .harness import proc_cpu_s, scenario_main

BSON_CAP = 16 * 1024 * 1024
CONTENT = "1234.567|0|1|" + "x" * 51  # same size as the swarm's 64-character messages
SENDER_NAME = "Bench User 0"


def _message_doc(group: ObjectId, sender: ObjectId, seq: int) -> dict[str, Any]:
    """A message in MongoStore's documented shape (storage/mongo.py)."""
    return {"_id": ObjectId(), "group_id": group, "seq": seq, "rev": seq, "revs": [seq], "kind": "message",
            "sender_id": sender,
            "sender": SENDER_NAME,
            "content": CONTENT, "timestamp": datetime.now(UTC), "client_msg_id": None,
            "edited_at": None, "deleted": False}


def _legacy_entry(sender: ObjectId) -> dict[str, Any]:
    return {"_id": ObjectId(), "sender_id": sender, "sender": SENDER_NAME, "content": CONTENT,
            "timestamp": datetime.now(UTC)}


async def _seed_messages(coll, group: ObjectId, sender: ObjectId, count: int) -> None:
    for start in range(1, count + 1, 5000):
        await coll.insert_many([_message_doc(group, sender, s) for s in range(start, min(start + 5000, count + 1))],
                               ordered=False)


async def _measure(send: Callable[[int], Awaitable[None]], db_pid: int, max_sends: int,
                   max_s: float, min_sends: int = 2, warmup_s: float = 0.5, max_warmup: int = 100) -> dict[str, Any]:
    """Time ``send(i)`` one at a time, bounded in count and time."""
    # Warm-up (connections, caches, the store's seq hint), not counted.
    warm_end = time.perf_counter() + warmup_s
    for _ in range(max_warmup):
        await send(-1)
        if time.perf_counter() > warm_end:
            break
    times: list[float] = []
    db0, me0 = proc_cpu_s(db_pid), time.process_time()
    t_end = time.perf_counter() + max_s
    while len(times) < max_sends and (len(times) < min_sends or time.perf_counter() < t_end):
        t = time.perf_counter()
        await send(len(times))
        times.append(time.perf_counter() - t)
    db1, me1 = proc_cpu_s(db_pid), time.process_time()
    n = len(times)
    times.sort()
    return {
        "sends": n,
        "wall_us_mean": statistics.fmean(times) * 1e6,
        "wall_us_p50": times[n // 2] * 1e6,
        "wall_us_p99": times[min(n - 1, int(n * 0.99))] * 1e6,
        "db_cpu_us_per_send": (db1 - db0) / n * 1e6 if db0 is not None and db1 is not None else None,
        "client_cpu_us_per_send": (me1 - me0) / n * 1e6,
        # CPU of both ends per send: far less sensitive to other load on the machine than wall time.
        "cpu_us_per_send": ((db1 - db0) + (me1 - me0)) / n * 1e6 if db0 is not None and db1 is not None else None,
    }


async def bench_direct(client, history: int, db_pid: int, budget: tuple[int, float]) -> dict[str, Any]:
    coll = client.bench_direct.messages
    await coll.create_index([("group_id", ASCENDING), ("seq", ASCENDING)], unique=True)
    group, sender = ObjectId(), ObjectId()
    t = time.perf_counter()
    await _seed_messages(coll, group, sender, history)
    seeded = time.perf_counter() - t

    seqs = itertools.count(history + 1)

    async def send(i: int) -> None:
        doc = _message_doc(group, sender, next(seqs))
        await coll.insert_one(doc)
        await coll.find_one({"_id": doc["_id"]})

    return {**await _measure(send, db_pid, *budget), "seed_s": seeded}


async def bench_this(uri: str, client, history: int, db_pid: int, budget: tuple[int, float]) -> dict[str, Any]:
    try:
        from storage.mongo import MongoStore
    except Exception as exc:  # not written yet, or broken: say so in the results
        return {"skipped": f"storage.mongo.MongoStore is not importable ({type(exc).__name__}: {exc})"}
    db = client.bench_store
    group, sender = ObjectId(), ObjectId()
    await db.users.insert_one({"_id": sender, "full_name": "Bench", "last_name": "User 0"})
    await db.study_groups.insert_one({"_id": group, "name": f"history {history}", "members": [sender]})
    store = MongoStore(uri, "bench_store")
    await store.open()  # creates its indexes before the seed goes in
    try:
        t = time.perf_counter()
        await _seed_messages(db.messages, group, sender, history)
        seeded = time.perf_counter() - t
        gid, uid = str(group), str(sender)
        seqs: list[int] = []

        async def send(i: int) -> None:
            access = await store.get_group(gid, uid)
            assert access is not None and access.is_member
            message, _ = await store.add_message(gid, sender_id=uid, sender_name=SENDER_NAME,
                                                 content=CONTENT, client_msg_id=None)
            seqs.append(message["seq"])  # warm-up sends included: all must be contiguous

        res = await _measure(send, db_pid, *budget)
        res["seed_s"] = seeded
        res["seq_contiguous"] = seqs == list(range(history + 1, history + 1 + len(seqs)))
        return res
    finally:
        await store.close()


async def bench_legacy(client, history: int, db_pid: int, budget: tuple[int, float]) -> dict[str, Any]:
    coll = client.bench_legacy.study_groups
    group, sender = ObjectId(), ObjectId()
    t = time.perf_counter()
    await coll.insert_one({"_id": group, "name": f"history {history}", "members": [sender],
                           "chat": [_legacy_entry(sender) for _ in range(history)]})
    seeded = time.perf_counter() - t

    async def send(i: int) -> None:
        await coll.update_one({"_id": group, "members": sender}, {"$push": {"chat": _legacy_entry(sender)}})
        doc = await coll.find_one({"_id": group})
        assert doc is not None

    res = await _measure(send, db_pid, *budget, max_warmup=1)
    doc = await coll.find_one({"_id": group})
    res["seed_s"] = seeded
    res["doc_bytes"] = len(bson.encode(doc))
    return res


def legacy_capacity() -> dict[str, Any]:
    """How many embedded messages of this shape fit in one group document under the 16 MiB cap."""
    sender = ObjectId()
    base = len(bson.encode({"_id": ObjectId(), "name": "history 50000", "members": [sender], "chat": []}))
    entry = len(bson.encode(_legacy_entry(sender)))
    size, n = base, 0
    while True:
        grown = size + 1 + len(str(n)) + 1 + entry  # element type, index key + NUL, body
        if grown > BSON_CAP:
            return {"max_messages": n, "doc_bytes_at_max": size, "entry_bytes": entry}
        size, n = grown, n + 1


async def break_test(client, cap: dict[str, Any], max_s: float = 90.0) -> dict[str, Any]:
    """Seed a group just under the cap and push until the server refuses (bounded)."""
    coll = client.bench_legacy.study_groups
    group, sender = ObjectId(), ObjectId()
    start = cap["max_messages"] - 1
    await coll.insert_one({"_id": group, "name": "history 50000", "members": [sender],
                           "chat": [_legacy_entry(sender) for _ in range(start)]})
    count, t0, last_push_s = start, time.perf_counter(), None
    try:
        for _ in range(5):
            if time.perf_counter() - t0 > max_s:
                return {"start": start, "accepted_up_to": count, "refused_at": None, "note": "time bound reached"}
            t = time.perf_counter()
            await coll.update_one({"_id": group}, {"$push": {"chat": _legacy_entry(sender)}})
            count += 1
            last_push_s = time.perf_counter() - t
        return {"start": start, "accepted_up_to": count, "refused_at": None}
    except PyMongoError as exc:
        return {"start": start, "accepted_up_to": count, "refused_at": count + 1,
                "error": str(exc)[:200], "push_s_near_cap": last_push_s}
    finally:
        await coll.delete_one({"_id": group})


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.uri, tz_aware=True)
    for name in ("bench_direct", "bench_store", "bench_legacy"):
        await client.drop_database(name)
    histories = [int(h) for h in args.histories.split(",")]
    fast, slow = (200, 2.0), (60, 5.0)
    if not args.quick:
        fast, slow = (500, 4.0), (100, 8.0)
    out: dict[str, Any] = {"histories": histories, "results": {"direct": {}, "this": {}, "legacy": {}}}
    try:
        # A throwaway round first: a freshly started server is slower for its first few hundred writes.
        await bench_direct(client, 1000, args.db_pid, (200, 1.0))
        for h in histories:
            out["results"]["direct"][str(h)] = await bench_direct(client, h, args.db_pid, fast)
            out["results"]["this"][str(h)] = await bench_this(args.uri, client, h, args.db_pid, fast)
            out["results"]["legacy"][str(h)] = await bench_legacy(client, h, args.db_pid, slow)
        out["legacy_capacity"] = legacy_capacity()
        if args.break_test:
            out["legacy_break"] = await break_test(client, out["legacy_capacity"])
    finally:
        await client.close()
    return out


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--histories", default="1000,50000")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--break-test", action="store_true")


def main() -> None:
    scenario_main(__doc__ or "", _arguments, main_async)


if __name__ == "__main__":
    main()
