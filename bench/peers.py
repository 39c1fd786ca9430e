"""The servers under test and the users/groups they are all seeded with."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .harness import PYTHON, ROOT, WORK

# Group numbers (see bench/servers/common.py for the id scheme).
SAT_GROUP = {10: 1, 100: 2, 1000: 3}
RATE_GROUP = {20: 4, 50: 5, 80: 6}
REDIS_GROUP = 7
IDLE_GROUP_BASE = 100
IDLE_GROUP_SIZE = 10


def write_spec(idle_conns: int) -> tuple[Path, str]:
    """The seed every peer loads: users 0..N-1 and the bench's groups. Returns (path, secret)."""
    secret = secrets.token_urlsafe(48)
    groups = [{"k": k, "name": f"saturation {n}", "first": 0, "count": n} for n, k in SAT_GROUP.items()]
    groups += [{"k": k, "name": f"rate {p}%", "first": 0, "count": 100} for p, k in RATE_GROUP.items()]
    groups.append({"k": REDIS_GROUP, "name": "redis 100", "first": 0, "count": 100})
    groups += [
        {"k": IDLE_GROUP_BASE + j, "name": f"idle {j}", "first": j * IDLE_GROUP_SIZE, "count": IDLE_GROUP_SIZE}
        for j in range(idle_conns // IDLE_GROUP_SIZE)
    ]
    spec = {"secret": secret, "users": max(idle_conns, max(SAT_GROUP)), "groups": groups}
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "spec.json"
    path.write_text(json.dumps(spec))
    return path, secret


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    argv: tuple[str, ...]          # {port}, {spec} filled in
    redis: bool = False            # accepts --redis-url
    redis_cluster: bool = False    # accepts --redis-cluster (REDIS_URL names a Redis Cluster)

    def command(self, port: int, spec: Path, redis_url: str | None = None, cluster: bool = False) -> list[str]:
        argv = [a.format(port=port, spec=spec) for a in self.argv]
        if redis_url:
            argv += ["--redis-url", redis_url]
        if cluster:
            argv.append("--redis-cluster")
        return argv


THIS = Peer("this", "this server", (PYTHON, "-m", "bench.servers.this_server",
                                     "--port", "{port}", "--spec", "{spec}"), redis=True, redis_cluster=True)
NODE = Peer("node", "Node Socket.IO v4", ("node", "bench/servers/node_chat.js",
                                          "--port", "{port}", "--spec", "{spec}"))
PSIO = Peer("psio", "python-socketio (defaults)", (PYTHON, "-m", "bench.servers.psio_chat",
                                                   "--port", "{port}", "--spec", "{spec}"), redis=True)
RAW = Peer("raw", "raw aiohttp WebSocket", (PYTHON, "-m", "bench.servers.raw_aiohttp",
                                            "--port", "{port}", "--spec", "{spec}"))
PEERS = {p.key: p for p in (THIS, NODE, PSIO, RAW)}


def this_server_missing() -> str | None:
    """Why this server cannot be benchmarked yet (``None`` when it can)."""
    if not (ROOT / "server" / "app.py").exists():
        return "server/app.py does not exist yet"
    check = subprocess.run(
        [PYTHON, "-c", "from server.app import create_app; from server.config import Settings; "
                       "from storage.memory import MemoryStore"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    if check.returncode != 0:
        return "server.app does not import: " + check.stderr.strip().splitlines()[-1][:200]
    return None
