"""Per-node Redis traffic with a channel per group against one channel for everything.

Four nodes of this server share one Redis. 400 groups of two members each: a group's members
are both on one node (even groups) or on two neighbouring nodes (odd groups), so each node serves
150 of the 400 groups. Every group's first member sends ``SENDS`` messages. Each node's
``chat_redis_received_messages`` (what it read from Redis, its own publishes on channels it
listens to included) is taken before and after the sends (members joined before, leave after), with ``REDIS_CHANNELS=single`` (every node hears
every broadcast of the deployment) and ``REDIS_CHANNELS=group`` (on one redis-server, and on a
Redis Cluster of three masters with sharded pub/sub). Counts, not timings: the machine's noise
does not enter them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Any

import jwt
import socketio

from .harness import PYTHON, WORK, BenchError, Procs, free_port, wait_port
from .servers.common import gid, uid

log = logging.getLogger("bench")

NODES = 4
GROUPS = 400
SENDS = 5
GROUP_BASE = 5000  # group numbers of this scenario (see servers/common.gid)


def _spec() -> tuple[str, str]:
    secret = secrets.token_urlsafe(48)
    groups = [{"k": GROUP_BASE + g, "name": f"channels {g}", "first": 2 * g, "count": 2} for g in range(GROUPS)]
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "channels-spec.json"
    path.write_text(json.dumps({"secret": secret, "users": 2 * GROUPS, "groups": groups}))
    return str(path), secret


def _placement(g: int) -> tuple[int, int]:
    """The nodes of group ``g``'s two members."""
    first = (g // 2) % NODES
    return first, first if g % 2 == 0 else (first + 1) % NODES


def _counts(port: int) -> tuple[float, float]:
    """What the node read from Redis and what it published, so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts = []
    for name in ("chat_redis_received_messages", "chat_redis_published_messages"):
        found = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
        if not found:
            raise BenchError(f"{name} is not in /metrics")
        counts.append(float(found.group(1)))
    return counts[0], counts[1]


async def _drive(ports: list[int], secret: str) -> tuple[int, list[tuple[float, float]], list[tuple[float, float]]]:
    """Connect and join every member on its node, then send from each group's first member.
    Returns the sends stored and each node's counts before and after the sends (before the
    members leave)."""
    clients: list[socketio.AsyncClient] = []

    async def member(user: int, node: int, group: str) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)
        token = jwt.encode({"sub": uid(user), "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
        await sio.connect(f"http://127.0.0.1:{ports[node]}", auth={"token": token}, transports=["websocket"],
                          wait_timeout=30)
        ack = await sio.call("join_group", {"group_id": group}, timeout=30)
        if not ack.get("ok"):
            raise BenchError(f"join refused: {ack}")
        clients.append(sio)
        return sio

    try:
        senders = []
        for start in range(0, GROUPS, 50):  # connect in slices: the nodes share one core
            made = await asyncio.gather(*[
                asyncio.gather(member(2 * g, _placement(g)[0], gid(GROUP_BASE + g)),
                               member(2 * g + 1, _placement(g)[1], gid(GROUP_BASE + g)))
                for g in range(start, min(start + 50, GROUPS))
            ])
            senders += [(first, gid(GROUP_BASE + g)) for g, (first, _) in zip(range(start, start + 50), made)]
        await asyncio.sleep(1)  # joins' presence broadcasts settle
        before = [_counts(p) for p in ports]
        stored = 0
        for i in range(SENDS):
            acks = await asyncio.gather(*[s.call("send_message", {"group_id": group, "content": f"hello {i}"},
                                                 timeout=30) for s, group in senders])
            stored += sum(1 for a in acks if a.get("ok"))
        await asyncio.sleep(1)  # the last broadcasts reach the other nodes
        return stored, before, [_counts(p) for p in ports]
    finally:
        await asyncio.gather(*[c.disconnect() for c in clients], return_exceptions=True)


def start_redis_cluster(procs: Procs) -> tuple[str, list[Any]]:
    """Three cluster-mode redis-servers (masters, no replicas), joined; returns (url, processes)."""
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port < 55535 and port not in ports and _free(port + 10000):  # +10000: the cluster bus
            ports.append(port)
    servers = []
    for port in ports:
        work = WORK / f"cluster-{port}"
        work.mkdir(parents=True, exist_ok=True)
        servers.append(procs.start(f"redis-cluster-{port}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes", "--cluster-config-file", str(work / "nodes.conf"), "--dir", str(work)]))
    for port, proc in zip(ports, servers):
        wait_port(port, proc)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True, text=True,
                                timeout=10).stdout for p in ports]
        if all("cluster_state:ok" in i for i in infos):
            return f"redis://127.0.0.1:{ports[0]}/0", servers
        time.sleep(0.1)
    raise BenchError("the bench's Redis Cluster did not become ok")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _one(procs: Procs, spec: str, secret: str, channels: str, cluster: bool) -> dict[str, Any]:
    if cluster:
        url, queue = start_redis_cluster(procs)
    else:
        port = free_port()
        queue = [procs.start("redis-channels", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no"])]
        wait_port(port, queue[0])
        url = f"redis://127.0.0.1:{port}/0"
    nodes: list[Any] = []
    ports: list[int] = []
    try:
        for n in range(NODES):
            port = free_port()
            argv = [PYTHON, "-m", "bench.servers.this_server", "--port", str(port), "--spec", spec,
                    "--redis-url", url, "--redis-channels", channels]
            nodes.append(procs.start(f"channels-node{n}", argv + (["--redis-cluster"] if cluster else [])))
            ports.append(port)
        for port, proc in zip(ports, nodes):
            wait_port(port, proc)
        sent, before, after = asyncio.run(_drive(ports, secret))
        received = [a[0] - b[0] for a, b in zip(after, before)]
        published = [a[1] - b[1] for a, b in zip(after, before)]
    finally:
        for proc in nodes + queue:
            procs.stop(proc)
    served = [sum(1 for g in range(GROUPS) if n in _placement(g)) for n in range(NODES)]
    return {"channels": channels, "cluster": cluster, "sent": sent, "received": received, "published": published,
            "groups_served": served}


def run_channels(procs: Procs) -> dict[str, Any]:
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        return {"skipped": "redis-server or redis-cli is not installed"}
    spec, secret = _spec()
    out: dict[str, Any] = {"nodes": NODES, "groups": GROUPS, "sends_per_group": SENDS, "runs": {}}
    for name, channels, cluster in (("single", "single", False), ("group", "group", False),
                                    ("group_cluster", "group", True)):
        try:
            res = out["runs"][name] = _one(procs, spec, secret, channels, cluster)
            log.info("  %-14s sent %d; received per node %s", name, res["sent"],
                     " ".join(f"{r:.0f}" for r in res["received"]))
        except (BenchError, subprocess.SubprocessError, OSError) as exc:
            out["runs"][name] = {"error": str(exc)}
            log.warning("  %s: %s", name, exc)
    return out
