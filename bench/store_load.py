"""Database commands per acked send, sends per second, and join latency vs history, on a MongoDB-wire server.

Everything goes through the chat's own rules (``handlers.chat.ChatService`` on ``MongoStore``), the
code a ``send_message`` or ``join_group`` event runs below the transport:

``sends``  one group; 1 sender sending one message at a time, then 16 senders at once (each waits
           for its ack before its next send). Every send has a ``client_msg_id``, as the clients'
           do. Driver commands are counted with pymongo's command monitoring and reported per
           acked send, by command, with the sends per second (wall) and the CPU per send of both
           ends.
``joins``  a group of 1,000 and of 100,000 messages (one in a hundred deleted), joined by a member
           who never read it: what ``join_group`` reads (membership, latest page, tops, read state,
           open questions), timed one join at a time; the unread count is checked exact.

Run by the harness as ``python -m bench.store_load --uri ... --db-pid PID --out FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from .harness import proc_cpu_s, scenario_main
from .storage import CONTENT, _seed_messages

SENDERS_AT_ONCE = 16
DELETED_EVERY = 100


class CommandCount(monitoring.CommandListener):
    """Commands this process sends, by name."""

    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.by_name[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = CommandCount()
monitoring.register(COMMANDS)  # every client made from here on


async def _group(client: AsyncMongoClient[dict[str, Any]], db_name: str, members: int) -> tuple[str, list[str]]:
    db = client[db_name]
    users = [ObjectId() for _ in range(members)]
    await db.users.insert_many([{"_id": u, "full_name": f"Bench User {i}"} for i, u in enumerate(users)])
    group = ObjectId()
    await db.study_groups.insert_one({"_id": group, "name": db_name, "members": users})
    return str(group), [str(u) for u in users]


async def _no_publish(message: Any) -> None:
    return None


async def bench_sends(uri: str, client: AsyncMongoClient[dict[str, Any]], db_pid: int, senders: int,
                      duration_s: float) -> dict[str, Any]:
    from handlers.chat import ChatService
    from storage.mongo import MongoStore

    db_name = f"bench_sends_{senders}"
    await client.drop_database(db_name)
    group, users = await _group(client, db_name, senders)
    store = MongoStore(uri, db_name)
    await store.open()
    service = ChatService(store)
    acked: list[int] = []
    latencies: list[float] = []

    async def sender(user: str, until: float, record: bool) -> None:
        n = 0
        while time.perf_counter() < until:
            n += 1
            t = time.perf_counter()
            message, duplicate = await service.send(user, group, name="Bench", content=CONTENT,
                                                    client_msg_id=f"{user}-{record}-{n}", publish=_no_publish)
            assert not duplicate
            if record:
                acked.append(message["seq"])
                latencies.append(time.perf_counter() - t)

    try:
        # Warm-up: connections, the store's knowledge of the group's top.
        await asyncio.gather(*(sender(u, time.perf_counter() + 0.5, False) for u in users))
        warm = await store.latest_seq(group)
        COMMANDS.by_name.clear()
        db0, me0, t0 = proc_cpu_s(db_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(sender(u, t0 + duration_s, True) for u in users))
        wall = time.perf_counter() - t0
        db1, me1 = proc_cpu_s(db_pid), time.process_time()
        commands = dict(COMMANDS.by_name)
        n = len(acked)
        latencies.sort()
        return {
            "senders": senders,
            "sends": n,
            "sends_per_s": n / wall,
            "commands_per_send": sum(commands.values()) / n,
            "commands": {name: count / n for name, count in sorted(commands.items())},
            "ack_ms_p50": latencies[n // 2] * 1e3,
            "ack_ms_p99": latencies[min(n - 1, int(n * 0.99))] * 1e3,
            "cpu_us_per_send": ((db1 - db0) + (me1 - me0)) / n * 1e6 if db0 is not None and db1 is not None else None,
            "exact": sorted(acked) == list(range(warm + 1, warm + 1 + n)),
        }
    finally:
        await store.close()
        await client.drop_database(db_name)


async def bench_join(uri: str, client: AsyncMongoClient[dict[str, Any]], db_pid: int, history: int,
                     max_joins: int, max_s: float) -> dict[str, Any]:
    from handlers.chat import ChatService
    from storage.mongo import MongoStore

    db_name = f"bench_join_{history}"
    await client.drop_database(db_name)
    group, (writer, reader) = await _group(client, db_name, 2)
    store = MongoStore(uri, db_name)
    await store.open()  # its indexes first, as in production
    try:
        t = time.perf_counter()
        messages = client[db_name].messages
        await _seed_messages(messages, ObjectId(group), ObjectId(writer), history)
        await messages.update_many({"group_id": ObjectId(group), "seq": {"$mod": [DELETED_EVERY, 0]}},
                                   {"$set": {"deleted": True}})
        seeded = time.perf_counter() - t
        service = ChatService(store)
        expected_unread = history - history // DELETED_EVERY

        async def join() -> int:
            await service.group_for(reader, group)
            page = await service.join_page(group, {"limit": 50})
            read = await service.read_state(reader, group, page)
            await store.open_questions(group, latest_rev=page["latest_rev"])
            return read.unread_count

        unread = await join()  # warm-up
        times: list[float] = []
        COMMANDS.by_name.clear()
        db0 = proc_cpu_s(db_pid)
        end = time.perf_counter() + max_s
        while len(times) < max_joins and (len(times) < 3 or time.perf_counter() < end):
            t = time.perf_counter()
            unread = await join()
            times.append(time.perf_counter() - t)
        db1 = proc_cpu_s(db_pid)
        n = len(times)
        times.sort()
        return {
            "history": history,
            "joins": n,
            "join_ms_p50": times[n // 2] * 1e3,
            "join_ms_p99": times[min(n - 1, int(n * 0.99))] * 1e3,
            "db_cpu_ms_per_join": (db1 - db0) / n * 1e3 if db0 is not None and db1 is not None else None,
            "commands_per_join": sum(COMMANDS.by_name.values()) / n,
            "unread_count": unread,
            "unread_exact": unread == expected_unread,
            "seed_s": seeded,
        }
    finally:
        await store.close()
        await client.drop_database(db_name)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.uri, tz_aware=True)
    duration = 3.0 if args.quick else 6.0
    joins = (30, 3.0) if args.quick else (100, 8.0)
    out: dict[str, Any] = {"sends": [], "joins": []}
    try:
        for senders in (1, SENDERS_AT_ONCE):
            out["sends"].append(await bench_sends(args.uri, client, args.db_pid, senders, duration))
        for history in (int(h) for h in args.join_histories.split(",")):
            out["joins"].append(await bench_join(args.uri, client, args.db_pid, history, *joins))
    finally:
        await client.close()
    if len(out["joins"]) == 2:
        small, large = out["joins"]
        out["join_growth_p50"] = large["join_ms_p50"] / small["join_ms_p50"]
    return out


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--join-histories", default="1000,100000")
    parser.add_argument("--quick", action="store_true")


def main() -> None:
    scenario_main(__doc__ or "", _arguments, main_async)


if __name__ == "__main__":
    main()
