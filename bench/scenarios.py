"""The Socket.IO scenarios: saturation per room size, fixed rates, idle connections, Redis."""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .channels import start_redis_cluster
from .harness import BenchError, Procs, free_port, proc_rss_kb, run_swarm, wait_port, wait_quiet
from .peers import IDLE_GROUP_BASE, IDLE_GROUP_SIZE, RATE_GROUP, REDIS_GROUP, SAT_GROUP, Peer

log = logging.getLogger("bench")

# Closed-loop shape per room size: (senders, sends in flight per sender). Enough in flight to keep
# the server busy, few enough that its queues (and so latency) stay bounded.
SATURATION_SHAPE = {10: (10, 10), 100: (20, 4), 1000: (10, 2)}
RATE_ROOM = 100
RATE_SENDERS = 20
# Fixed absolute rates, the same for every peer: (room, deliveries per second, senders).
# 5,000 deliveries/s in a room of 100 is 50 sends/s; in a room of 10, 500 sends/s; in a room
# of 1,000, 5 sends/s. 50,000 a second in a room of 10 is about half of one core's saturation.
FIXED_RATES = (
    (10, 1_000, 10), (10, 5_000, 10), (10, 50_000, 10),
    (100, 1_000, 10), (100, 5_000, 10), (100, 50_000, 10),
    (1000, 5_000, 5),
)
# A window in which other processes took more than this share of the server's core is measured
# again (at most MAX_RETRIES times per row, and only while the run is within its time budget).
# This machine is shared.
NOISE_LIMIT = 0.25
MAX_RETRIES = 2
# Many idle connections on this server: the goal is 100,000 on one process, but a process
# here may hold only as many sockets as its open-file limit allows (its hard limit cannot be
# raised without CAP_SYS_RESOURCE), so the row takes the most that fit, with room for the
# process's other files. The references are measured at `Plan.idle_conns`.
MANY_CONNS_GOAL = 100_000
FD_HEADROOM = 500


def many_conns_possible() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else MANY_CONNS_GOAL + FD_HEADROOM
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # children inherit it
    return max(0, min(MANY_CONNS_GOAL, limit - FD_HEADROOM) // 1000 * 1000)


@dataclass(frozen=True)
class Plan:
    quick: bool
    rooms: tuple[int, ...] = (10, 100, 1000)
    loads: tuple[int, ...] = (20, 50, 80)
    idle_conns: int = 10_000
    many_conns: int = 10_000  # this server's idle row (see many_conns_possible)
    heartbeat_s: float = 30.0  # more than one ping interval (25 s): every connection pinged
    probe_s: float = 10.0
    warmup_s: float = 1.5
    measure_s: float = 4.0
    windows: int = 3  # each row is the median of this many windows
    budget_s: float = 900.0  # retries of noisy windows stop once the run is this old
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(quick=True, rooms=(10, 100), loads=(20, 80), idle_conns=2_000, many_conns=2_000,
                       heartbeat_s=5.0, probe_s=3.0, warmup_s=0.5, measure_s=2.0, budget_s=240.0)
        return cls(quick=False, many_conns=max(10_000, many_conns_possible()))

    def has_time(self) -> bool:
        return time.monotonic() - self.started < self.budget_s


def _swarm(procs: Procs, plan: Plan, url: str, secret: str, pid: int, **cfg: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": url, "secret": secret, "serverPid": pid,
        "warmupS": plan.warmup_s, "measureS": plan.measure_s,
        "drainS": 15, "setupTimeoutS": 120, "settleMaxS": 60,
    }
    base.update(cfg)
    limit = (base["setupTimeoutS"] + base["settleMaxS"] + base["warmupS"] + base["measureS"] + base["drainS"]
             + base.get("holdS", 0) + base.get("heartbeatS", 0) + base.get("probeS", 0) + 60)
    return run_swarm(procs, base, timeout_s=limit)


def server_core_other_load(res: dict[str, Any]) -> float | None:
    busy = (res.get("core_busy") or {}).get("1")
    if busy is None or not res.get("window_s"):
        return None
    extra = sum(x or 0 for x in res.get("extra_cpu_s") or []) / res["window_s"]
    return max(0.0, busy - res["server_cpu_util"] - extra)


def _measured(procs: Procs, plan: Plan, url: str, secret: str, pid: int, **cfg: Any) -> dict[str, Any]:
    """A row: the median of ``plan.windows`` windows (each its own swarm run), with their spread.

    A window in which other processes took more than ``NOISE_LIMIT`` of the server's core is
    replaced by another (at most ``MAX_RETRIES`` per row, while the run is within its time budget).
    """
    kept: list[dict[str, Any]] = []
    retried = 0
    while len(kept) < plan.windows:
        res = _swarm(procs, plan, url, secret, pid, **cfg)
        if res.get("error"):
            return res
        noise = server_core_other_load(res)
        if noise is not None and noise > NOISE_LIMIT and retried < MAX_RETRIES and plan.has_time():
            retried += 1
            log.info("  (other processes took %.0f%% of the server core: measuring that window again)", noise * 100)
            wait_quiet(pid, max_s=60)
            continue
        kept.append(res)
    return combine(kept, retried)


def combine(windows: list[dict[str, Any]], retried: int = 0) -> dict[str, Any]:
    """One row from several windows: the median of each figure, the spread (lowest, highest) of
    the headline ones, and exactness summed over all windows (every window must be exact). The
    other fields are those of the window whose deliveries per CPU-second is the median."""
    key = "deliveries_per_cpu_s" if all(w.get("deliveries_per_cpu_s") for w in windows) else "deliveries_per_s"
    ordered = sorted(windows, key=lambda w: w.get(key) or 0)
    out = dict(ordered[len(ordered) // 2])

    def median(values: list[Any]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    def spread(values: list[Any]) -> list[float] | None:
        known = [v for v in values if v is not None]
        return [min(known), max(known)] if known else None

    per_send = [w["sends"] / w["server_cpu_s"] for w in windows if w.get("sends") and w.get("server_cpu_s")]
    out["sends_per_cpu_s"] = median(per_send)
    out["spread"] = {"sends_per_cpu_s": spread(per_send)}
    for name in ("deliveries_per_s", "deliveries_per_cpu_s"):
        values = [w.get(name) for w in windows]
        out[name], out["spread"][name] = median(values), spread(values)
    latencies = [w.get("latency_ms") or {} for w in windows]
    out["latency_ms"] = {k: median([lat.get(k) for lat in latencies]) for k in (out.get("latency_ms") or {})}
    for k in ("p99", "p999"):
        out["spread"][k] = spread([lat.get(k) for lat in latencies])
    checks = [w.get("verify") or {} for w in windows]
    if all(checks):
        out["verify"] = {k: sum(c.get(k, 0) for c in checks) for k in checks[0] if isinstance(checks[0][k], int)}
    out["drain_complete"] = all(w.get("drain_complete") for w in windows)
    out["windows"], out["retried"] = len(windows), retried
    return out


def _start(procs: Procs, peer: Peer, spec, redis_url: str | None = None, cluster: bool = False):
    port = free_port()
    proc = procs.start(peer.key, peer.command(port, spec, redis_url, cluster))
    wait_port(port, proc)
    wait_quiet(proc.pid)
    return proc, f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"


def _note(name: str, res: dict[str, Any]) -> None:
    if res.get("error"):
        log.warning("  %-14s ERROR %s %s", name, res["error"], res.get("errors", [])[:2])
    elif res.get("mode") == "idle":
        log.info("  %-14s %6d conns  %.2f KB/conn  (%.1fs to connect)", name, res["conns"],
                 res["kb_per_conn"], res["setup_s"])
        beat, probe = res.get("heartbeat") or {}, res.get("probe") or {}
        if beat:
            log.info("  %-14s %.1f%% of a core, %.0f pings/s, %d closed", "heartbeats",
                     beat["server_cpu_util"] * 100, beat["pings_per_s"], beat["closed"])
        if probe:
            log.info("  %-14s p50 %.1f p99 %.1f ms, missing/dups/reorders %d/%d/%d", "probe",
                     probe["latency_ms"].get("p50") or 0, probe["latency_ms"].get("p99") or 0,
                     probe["verify"]["missing"], probe["verify"]["dups"], probe["verify"]["reorders"])
    else:
        v, lat = res["verify"], res["latency_ms"]
        log.info("  %-14s %8.0f deliv/s %8.0f deliv/CPU-s  cpu %.2f gen %.2f  p50 %.1f p99 %.1f ms"
                 "  missing/dups/reorders %d/%d/%d", name, res["deliveries_per_s"],
                 res["deliveries_per_cpu_s"] or 0, res["server_cpu_util"], res["gen_cpu_util"],
                 lat["p50"] or 0, lat["p99"] or 0, v["missing"], v["dups"], v["reorders"])


def run_idle(procs: Procs, peer: Peer, plan: Plan, spec, secret: str) -> dict[str, Any]:
    """Many idle connections on a fresh process: memory, heartbeats, a probe group, a mass disconnect."""
    out: dict[str, Any] = {}
    proc, url = _start(procs, peer, spec)
    try:
        out["rss_start_kb"] = proc_rss_kb(proc.pid)
        conns = plan.many_conns if peer.key == "this" else plan.idle_conns
        res = _swarm(procs, plan, url, secret, proc.pid, mode="idle", conns=conns,
                     groupBase=IDLE_GROUP_BASE, groupSize=IDLE_GROUP_SIZE, concurrency=200, holdS=2,
                     heartbeatS=plan.heartbeat_s, probeS=plan.probe_s, probeRate=20,
                     setupTimeoutS=max(120, conns // 100))
        out["idle"] = res
        _note("idle", res)
        _alive(proc)
        # The swarm dropped every connection at once and measured the server's CPU until it
        # went quiet (how long, and how much CPU, that many disconnects take).
        if not res.get("error"):
            wait_quiet(proc.pid, max_s=90)
            log.info("  %-14s %.1f s, %.2f CPU-s to process the disconnects", "teardown",
                     res["teardown_s"], res["teardown_cpu_s"])
    finally:
        procs.stop(proc)
    return out


def run_peer(procs: Procs, peer: Peer, plan: Plan, spec, secret: str) -> dict[str, Any]:
    """All single-node scenarios against one peer: idle on one fresh process, the rest on another.

    Ten thousand connections leave a Python process with a much bigger heap (and its collector
    with more to walk), which would tax every later figure, so throughput gets its own process.
    """
    out: dict[str, Any] = {"label": peer.label, "saturation": {}, "rates": {}}
    try:
        out.update(run_idle(procs, peer, plan, spec, secret))
        proc, url = _start(procs, peer, spec)
        try:
            # The largest room goes last: filling and emptying it can keep a server busy long
            # after (this server's presence events grow with the square of the room).
            small = [r for r in plan.rooms if r <= RATE_ROOM]
            large = [r for r in plan.rooms if r > RATE_ROOM]
            for room in small:
                _saturate(procs, plan, url, secret, proc, room, out)
            sat = out["saturation"].get(str(RATE_ROOM), {})
            if sat.get("deliveries_per_s"):
                for load in plan.loads:
                    target = sat["deliveries_per_s"] * load / 100
                    res = _measured(procs, plan, url, secret, proc.pid, mode="rate", conns=RATE_ROOM,
                                    groupBase=RATE_GROUP[load], groupSize=RATE_ROOM,
                                    senders=RATE_SENDERS, rate=target)
                    res["load_pct"] = load
                    out["rates"][str(load)] = res
                    _note(f"{load}% load", res)
                    _alive(proc)
                    wait_quiet(proc.pid)
            for room, rate, senders in FIXED_RATES:
                if room not in plan.rooms:
                    continue
                if room > RATE_ROOM:
                    _saturate(procs, plan, url, secret, proc, room, out)
                res = _measured(procs, plan, url, secret, proc.pid, mode="rate", conns=room,
                                groupBase=SAT_GROUP[room], groupSize=room, senders=senders, rate=rate)
                out.setdefault("fixed", {})[f"{room}@{rate}"] = res
                _note(f"room {room} at {rate}/s", res)
                _alive(proc)
                wait_quiet(proc.pid)
            for room in large:
                if str(room) not in out["saturation"]:
                    _saturate(procs, plan, url, secret, proc, room, out, quiet_after=False)
        finally:
            procs.stop(proc)
    except BenchError as exc:
        out["error"] = str(exc)
        log.warning("  %s: %s", peer.label, exc)
    return out


def _saturate(procs: Procs, plan: Plan, url: str, secret: str, proc, room: int, out: dict[str, Any],
              quiet_after: bool = True) -> None:
    senders, window = SATURATION_SHAPE[room]
    res = _measured(procs, plan, url, secret, proc.pid, mode="saturate", conns=room,
                    groupBase=SAT_GROUP[room], groupSize=room, senders=senders, window=window)
    out["saturation"][str(room)] = res
    _note(f"room {room}", res)
    _alive(proc)
    if quiet_after:
        wait_quiet(proc.pid)


def run_redis(procs: Procs, peer: Peer, plan: Plan, spec, secret: str) -> dict[str, Any]:
    """Room-100 saturation on one node without, then with ``REDIS_URL`` (back to back, fresh processes),
    and for a peer that can, with ``REDIS_URL`` naming a Redis Cluster of three masters.

    The harness's own redis-servers run on the server core, so they do not disturb the swarm;
    their CPU is reported separately (``extra_cpu_s``).
    """
    port = free_port()
    redis = procs.start(f"redis-{peer.key}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no"])
    out: dict[str, Any] = {"label": peer.label}
    senders, window = SATURATION_SHAPE[RATE_ROOM]
    cluster: list[Any] = []
    try:
        wait_port(port, redis)
        windows: list[tuple[str, str | None, list[int]]] = [
            ("without_redis", None, []), ("with_redis", f"redis://127.0.0.1:{port}/0", [redis.pid])]
        if peer.redis_cluster:
            cluster_url, cluster = start_redis_cluster(procs)
            windows.append(("with_redis_cluster", cluster_url, [p.pid for p in cluster]))
        for name, url_arg, extra in windows:
            proc, url = _start(procs, peer, spec, url_arg, cluster=name == "with_redis_cluster")
            try:
                res = _measured(procs, plan, url, secret, proc.pid, mode="saturate", conns=RATE_ROOM,
                                groupBase=REDIS_GROUP, groupSize=RATE_ROOM, senders=senders, window=window,
                                extraPids=extra)
                out[name] = res
                _note(name.replace("_", " "), res)
                _alive(proc)
            finally:
                procs.stop(proc)
    except BenchError as exc:
        out["error"] = str(exc)
        log.warning("  %s with redis: %s", peer.label, exc)
    finally:
        for server in [redis, *cluster]:
            procs.stop(server)
    return out


def _alive(proc) -> None:
    if proc.poll() is not None:
        raise BenchError(f"{proc.bench_name} died (exit {proc.returncode}); see bench/.work/logs/{proc.bench_name}.log")
