"""Soak: many clients in many groups sending, leaving, rejoining and reconnecting at
random against one real server process on MongoDB, ending with an exact account.

Marked slow: `make soak` (or `pytest -m slow`) runs it; SOAK_SECONDS sets the load
phase (default 60 s). The account is printed and written to tests/artifacts/soak.md.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from tests.support.chat import SECRET
from tests.support.mongo import seed_mongo
from tests.support.nodes import Node
from tests.support.resilient import ResilientClient

pytestmark = pytest.mark.slow

USERS = [f"66a0000000000000000000{i:02x}" for i in range(1, 41)]
GROUPS = {f"66b0000000000000000000{g:02x}": [USERS[(g * 5 + k) % 40] for k in range(10)] for g in range(8)}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(900)
async def test_soak_exact_account(mongo_uri, mongo_db_name, tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    await seed_mongo(mongo_uri, mongo_db_name, users=[(u, f"User {u[-2:]}", "") for u in USERS],
                     groups=[(g, f"Group {g[-2:]}", members) for g, members in GROUPS.items()])
    node = Node({"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET,
                 "LOG_LEVEL": "WARNING"}, tmp_path, "soak").start()
    rng = random.Random(20261129)
    clients: list[ResilientClient] = []
    try:
        for group_id, members in GROUPS.items():
            for user in members[:6]:  # 48 connections, some users in two groups
                client = ResilientClient(user, [node.url], group_id)
                await client.connect()
                clients.append(client)
        live_dups = 0
        reorders = 0

        async def behave(client: ResilientClient, until: float) -> None:
            nonlocal live_dups, reorders
            loop = asyncio.get_running_loop()
            while loop.time() < until:
                roll = rng.random()
                if roll < 0.80:
                    await client.send(f"{client.user_id} says {rng.random():.6f}")
                elif roll < 0.90:
                    live_dups += len(client.live_seqs) - len(set(client.live_seqs))
                    reorders += client.live_seqs != sorted(client.live_seqs)
                    await client.sio.call("leave_group", {"group_id": client.group_id}, timeout=10)
                    await asyncio.sleep(rng.random() * 0.2)
                    await client.reconnect()  # rejoins with since_seq
                elif roll < 0.95:
                    live_dups += len(client.live_seqs) - len(set(client.live_seqs))
                    reorders += client.live_seqs != sorted(client.live_seqs)
                    await client.reconnect()
                else:
                    await asyncio.sleep(rng.random() * 0.5)
                await asyncio.sleep(rng.random() * 0.05)

        loop = asyncio.get_running_loop()
        rss_start = rss_kb(node.proc.pid)
        await asyncio.gather(*[behave(c, loop.time() + seconds / 2) for c in clients])
        await asyncio.sleep(2)
        rss_half = rss_kb(node.proc.pid)
        await asyncio.gather(*[behave(c, loop.time() + seconds / 2) for c in clients])
        await asyncio.sleep(2)
        rss_end = rss_kb(node.proc.pid)

        rows = []
        totals = dict(acked=0, stored=0, gaps=0, dups=0)
        for group_id in GROUPS:
            members = [c for c in clients if c.group_id == group_id]
            acked = {m["id"] for c in members for m in c.acked.values()}
            histories = [await c.catch_up() for c in members]
            stored = {m["id"] for m in members[0].seen.values()}
            gaps = sum(len(set(range(1, len(h) + 1)) ^ set(h)) for h in histories)
            dups = len(stored) - len({(m["sender_id"], m["client_msg_id"]) for m in members[0].seen.values()})
            delivered = [len(h) for h in histories]
            rows.append((group_id, len(acked), len(stored), min(delivered), max(delivered), dups, gaps))
            totals["acked"] += len(acked)
            totals["stored"] += len(stored)
            totals["gaps"] += gaps
            totals["dups"] += dups
            assert stored == acked, "stored history must equal the acknowledged sends"
            assert all(h == list(range(1, len(acked) + 1)) for h in histories)
        for c in clients:
            live_dups += len(c.live_seqs) - len(set(c.live_seqs))
            reorders += c.live_seqs != sorted(c.live_seqs)

        table = ["| group | acked | stored | delivered per member (min–max, after catch-up) | duplicates | gaps |",
                 "|---|---:|---:|---:|---:|---:|"]
        table += [f"| {g} | {a} | {s} | {lo}–{hi} | {d} | {gp} |" for g, a, s, lo, hi, d, gp in rows]
        table += [f"| **total** | {totals['acked']} | {totals['stored']} | | {totals['dups']} | {totals['gaps']} |",
                  "",
                  f"live duplicates on one connection: {live_dups}; connections that saw seq go backwards: {reorders}",
                  f"server RSS: start {rss_start} KB, after first half {rss_half} KB, end {rss_end} KB "
                  f"({len(clients)} connections, {seconds:.0f} s of load)"]
        report = "\n".join(table)
        print("\n" + report)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "soak.md").write_text(report + "\n")
        assert totals["dups"] == totals["gaps"] == live_dups == reorders == 0
        # Once warm, a second half of the same load must not grow the server much.
        assert rss_end - rss_half < max(8_000, (rss_half - rss_start)), (rss_start, rss_half, rss_end)
    finally:
        for c in clients:
            await c.close()
        node.stop()
