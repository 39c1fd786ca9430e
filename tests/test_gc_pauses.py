"""The server process's garbage collections, as an operator sees them in ``/metrics``.

A full collection holds the event loop for as long as it walks every object the collector
tracks. What start-up made (modules, classes, functions: about 85,000 objects, 15-30 ms a walk)
lives as long as the process, so ``python -m server`` leaves it out of every later collection,
and each collection's pause is exported by generation.
"""

from __future__ import annotations

import re
import urllib.request

from tests.support.chat import ANA, BEN, MATHS, SECRET
from tests.support.mongo import seed_mongo
from tests.support.nodes import Node

USERS = [(ANA, "Ana", "García"), (BEN, "Ben", "Okafor")]
GROUPS = [(MATHS, "Maths", [ANA, BEN])]


def metrics(node: Node) -> tuple[dict[str, dict[str, float]], float]:
    """``chat_gc_pause_seconds`` by generation (its count, and its cumulative buckets by bound),
    and ``chat_gc_frozen_objects``."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pauses: dict[str, dict[str, float]] = {}
    for kind, generation, bound, value in re.findall(
            r'^chat_gc_pause_seconds_(count|bucket)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$', text, re.MULTILINE):
        pauses.setdefault(generation, {})[bound if kind == "bucket" else "count"] = float(value)
    frozen = re.search(r"^chat_gc_frozen_objects (\S+)$", text, re.MULTILINE)
    return pauses, float(frozen.group(1)) if frozen else 0.0


async def test_the_start_up_heap_is_left_out_of_collections_and_each_pause_is_measured(
        mongo_uri, mongo_db_name, node_factory, clients):
    await seed_mongo(mongo_uri, mongo_db_name, users=USERS, groups=GROUPS)
    node = node_factory({"MONGODB_URI": mongo_uri, "MONGODB_DB": mongo_db_name, "JWT_SECRET": SECRET,
                         "RATE_LIMIT_SEND_PER_S": "0"}, "gc")
    at_start, frozen = metrics(node)
    # Modules, classes and functions: a full collection no longer walks them.
    assert frozen > 50_000, f"only {frozen:.0f} objects were left out of collections"
    assert sorted(at_start) == ["0", "1", "2"]
    assert at_start["2"]["count"] >= 1  # the one that ran before the heap was frozen

    ana, ben = await clients(node, ANA), await clients(node, BEN)
    for client in (ana, ben):
        await client.call("join_group", {"group_id": MATHS})
    for i in range(300):
        await ben.call("send_message", {"group_id": MATHS, "content": f"message {i}"})
    after, _ = metrics(node)
    assert after["0"]["count"] > at_start["0"]["count"], "no collection of the youngest objects was measured"
    for generation in after.values():
        assert generation["+Inf"] == generation["count"]
