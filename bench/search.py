"""Search latency with one group of 100,000 messages, on a MongoDB-wire server.

The group is filled with study-group chat in Spanish and English, stored in
``MongoStore``'s shape (words included); then each query kind is timed, one
search at a time, through ``MongoStore.search_messages`` (what ``search_messages``
runs, membership check aside), and beside it:

``embedded``  the same search on the embedded store holding the same messages;
``scan``      what a server without a words index would do: a case-insensitive
              ``$regex`` over every message's content, newest first (it finds no
              accent-insensitive match: "resolvio" misses "resolvió"), timed a
              few times only.

Run by the harness as ``python -m bench.search --uri ... --db-pid PID --out FILE``.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, AsyncMongoClient

from storage.memory import MemoryStore
from storage.mongo import MongoStore
from storage.search_words import message_words, parse_query

from .harness import proc_cpu_s, scenario_main

DB = "bench_search"
# Sentences of a study group; the words' frequencies set each query's cost.
COMMON = [
    "¿Alguien entendió el ejercicio {n} de la hoja?",
    "Mañana repasamos en la biblioteca a las {n}",
    "Can someone explain problem {n} from the notes?",
    "I uploaded the notes from last week, page {n}",
    "La respuesta del {n} me da distinto, ¿lo revisamos?",
    "We should split the chapters before the exam, I take {n}",
    "Gracias, ya lo vi en el libro, página {n}",
    "Does anyone have the slides from lecture {n}?",
]
TOPICAL = [  # one message in 20
    "Las derivadas parciales del {n} salen con la regla de la cadena",
    "The derivative of x^{n} is easy with the power rule",
    "¿Cómo resolvió el profe la integral por partes del {n}?",
]
RARE = "El hessiano del ejercicio {n} es definido positivo"  # one message in 1,000
QUERIES = {
    "common word": "notes",
    "rare word": "hessiano",
    "two words": "regla cadena",
    "prefix": "deriv",
    "accent-free": "resolvio",
    "short prefix": "ta",
    "no match": "zyxwv",
}


def content(i: int, rng: random.Random) -> str:
    if i % 1000 == 999:
        return RARE.format(n=i)
    if i % 20 == 7:
        return rng.choice(TOPICAL).format(n=i)
    return rng.choice(COMMON).format(n=i)


async def seed(client: AsyncMongoClient[dict[str, Any]], memory: MemoryStore, count: int) -> tuple[str, float]:
    db = client[DB]
    group, sender = ObjectId(), ObjectId()
    await db.users.insert_one({"_id": sender, "full_name": "Bench", "last_name": "User"})
    await db.study_groups.insert_one({"_id": group, "name": "search", "members": [sender]})
    memory.add_group(str(group), "search", [str(sender)])
    rng = random.Random(2026)
    start = datetime.now(UTC) - timedelta(days=30)
    t = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for i in range(count):
        text = content(i, rng)
        batch.append({
            "_id": ObjectId(), "group_id": group, "seq": i + 1, "rev": i + 1, "revs": [i + 1], "kind": "message",
            "sender_id": sender, "sender": "Bench User", "content": text, "words": message_words(text),
            "timestamp": start + timedelta(seconds=i * 20), "client_msg_id": None, "edited_at": None,
            "deleted": False,
        })
        memory.seed_message(str(group), sender_id=str(sender), sender_name="Bench User", content=text)
        if len(batch) == 5000:
            await db.messages.insert_many(batch, ordered=False)
            batch = []
    if batch:
        await db.messages.insert_many(batch, ordered=False)
    return str(group), time.perf_counter() - t


async def timed(call: Callable[[], Awaitable[Any]], db_pid: int | None, most: int, seconds: float) -> dict[str, Any]:
    await call()  # warm-up
    times: list[float] = []
    db0, me0 = proc_cpu_s(db_pid) if db_pid else None, time.process_time()
    end = time.perf_counter() + seconds
    found = None
    while len(times) < most and (len(times) < 3 or time.perf_counter() < end):
        t = time.perf_counter()
        found = await call()
        times.append(time.perf_counter() - t)
    db1, me1 = proc_cpu_s(db_pid) if db_pid else None, time.process_time()
    times.sort()
    n = len(times)
    return {
        "runs": n,
        "p50_ms": times[n // 2] * 1e3,
        "p95_ms": times[min(n - 1, int(n * 0.95))] * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "cpu_ms_per_search": ((db1 - db0) if db0 is not None and db1 is not None else 0) * 1e3 / n
        + (me1 - me0) * 1e3 / n,
        "results": found,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.uri, tz_aware=True)
    await client.drop_database(DB)
    store = MongoStore(args.uri, DB)
    await store.open()  # its indexes exist before the seed goes in
    memory = MemoryStore()
    out: dict[str, Any] = {"messages": args.messages, "limit": args.limit, "queries": {}}
    try:
        group, out["seed_s"] = await seed(client, memory, args.messages)
        messages = client[DB].messages
        for name, text in QUERIES.items():
            query = parse_query(text)

            async def indexed(store: Any = store, query: Any = query) -> int:
                found, _ = await store.search_messages([group], query, limit=args.limit)
                return len(found)

            async def embedded(query: Any = query) -> int:
                found, _ = await memory.search_messages([group], query, limit=args.limit)
                return len(found)

            pattern = re.escape(text)

            async def scan(pattern: str = pattern) -> int:
                cursor = messages.find({"group_id": ObjectId(group), "deleted": False,
                                        "content": {"$regex": pattern, "$options": "i"}})
                return len(await cursor.sort("seq", DESCENDING).limit(args.limit).to_list(None))

            row = {
                "query": text,
                "this": await timed(indexed, args.db_pid, 60 if not args.quick else 15, 6.0 if not args.quick else 2.0),
                "embedded": await timed(embedded, None, 200, 1.0),
            }
            if not args.skip_scan:
                row["scan"] = await timed(scan, args.db_pid, 3, 0.0)
            out["queries"][name] = row
    finally:
        await store.close()
        await client.drop_database(DB)
        await client.close()
    return out


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-scan", action="store_true")


def main() -> None:
    scenario_main(__doc__ or "", _arguments, main_async)


if __name__ == "__main__":
    main()
