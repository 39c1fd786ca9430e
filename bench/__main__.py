"""``python -m bench [--quick]``: run every scenario against every peer and write bench/results/.

Normally started through ``bench/run``, which installs the Node and plot dependencies first.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import report
from .channels import run_channels
from .harness import BENCH, LOGS, PYTHON, ROOT, SERVER_CORE, WORK, BenchError, Procs, free_port, wait_port
from .peers import PEERS, this_server_missing, write_spec
from .scenarios import Plan, run_idle, run_peer, run_redis

log = logging.getLogger("bench")
RESULTS = BENCH / "results"


# A fixed piece of pure Python, timed on the server's core before a run: how fast this host runs
# the interpreter. Runs on different days can land on hosts that differ by 2× here while Node
# differs far less, so a ratio to Node moves with it; this figure says when that happened.
CALIBRATION = """
import time
best = float("inf")
for _ in range(3):
    started, x = time.perf_counter(), 0
    for i in range(3_000_000):
        x += i * 2
    best = min(best, time.perf_counter() - started)
print(round(best * 1000))
"""


# What entering the kernel costs on the server's core: a system call that does nothing, and a
# 40-byte send over loopback TCP (what one small frame to one client costs, its delivery into the
# receiving socket included). Hosts differ several-fold here (processor, hypervisor, the
# kernel's speculative-execution mitigations), and a peer that makes a system call per frame
# (Node) is moved by it far more than one that gathers its frames (this server): the run's
# "system calls per send" say how many each made.
KERNEL_ENTRY = """
import os, socket, time
def best(fn, n):
    out = float("inf")
    for _ in range(3):
        started = time.process_time()
        fn(n)
        out = min(out, (time.process_time() - started) / n)
    return round(out * 1e6, 2)
def nothing(n):
    for _ in range(n):
        os.getppid()
server = socket.create_server(("127.0.0.1", 0))
writer = socket.create_connection(server.getsockname())
reader, _ = server.accept()
writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reader.setblocking(False)
frame = b"x" * 40
def send(n):
    for i in range(n):
        writer.send(frame)
        if i % 64 == 63:
            try:
                while reader.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass
print(best(nothing, 300_000), best(send, 100_000))
"""


def _kernel_entry() -> dict[str, float]:
    """``KERNEL_ENTRY``'s two figures, in µs of CPU, measured on the server's core."""
    try:
        syscall_us, send_us = map(float, subprocess.run(
            ["taskset", "-c", SERVER_CORE, PYTHON, "-c", KERNEL_ENTRY], capture_output=True, text=True,
            timeout=120, check=True).stdout.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    return {"syscall_us": syscall_us, "loopback_send_us": send_us}


def _interpreter() -> dict[str, Any]:
    """The server's interpreter: its binary, whether it runs from a shared libpython (slower:
    calls between its parts go through the PLT) and the calibration loop's time."""
    probe = ("import sys, sysconfig; print(sys.executable); "
             "print('shared' if sysconfig.get_config_var('Py_ENABLE_SHARED') else 'static')")
    try:
        executable, libpython = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True,
                                               timeout=30, check=True).stdout.split()
        loop_ms = int(subprocess.run(["taskset", "-c", SERVER_CORE, PYTHON, "-c", CALIBRATION], capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    return {"executable": os.path.realpath(executable), "libpython": libpython, "calibration_ms": loop_ms}


def _meta() -> dict[str, Any]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    versions = {"Python": platform.python_version(), "Node": cmd("node", "--version").lstrip("v")}
    for dist in ("python-socketio", "python-engineio", "aiohttp", "pymongo", "secantusdb"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for pkg in ("socket.io", "ws"):
        try:
            versions[f"{pkg} (npm)"] = json.loads((BENCH / "node_modules" / pkg / "package.json").read_text())["version"]
        except OSError:
            pass
    versions["redis-server"] = cmd("redis-server", "--version").split(" v=")[-1].split()[0] if shutil.which("redis-server") else "absent"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    dirty = " (+ uncommitted changes)" if cmd("git", "status", "--porcelain", "--untracked-files=no") else ""
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": cmd("git", "rev-parse", "--short", "HEAD") + dirty,
            "cpu": cpu, "cores": os.cpu_count(), "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
            "versions": versions}


def _on_secantus(procs: Procs, name: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m bench.<name> --uri --db-pid --out <args>`` (on the swarm's core)
    against a fresh SecantusDB (on the server's core); its JSON, or why there is none."""
    if not shutil.which("secantusd-py", path=str(ROOT / ".venv" / "bin")):
        return {"skipped": "secantusd-py is not installed in .venv"}
    data = WORK / "secantus"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    db = procs.start("secantusd", [str(ROOT / ".venv" / "bin" / "secantusd-py"), "--host", "127.0.0.1",
                                   "--port", str(port), "--storage-path", str(data), "--log-level", "WARNING"])
    out_file = WORK / f"{name}.json"
    out_file.unlink(missing_ok=True)
    try:
        wait_port(port, db, timeout_s=60)
        argv = [PYTHON, "-m", f"bench.{name}", "--uri", f"mongodb://127.0.0.1:{port}/?retryWrites=false",
                "--db-pid", str(db.pid), "--out", str(out_file), *args]
        client = procs.start(name, argv, core="0")
        try:
            client.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"{name} scenario did not finish in time"}
        finally:
            procs.stop(client)
        if client.returncode != 0 or not out_file.exists():
            return {"error": f"{name} scenario failed (exit {client.returncode}); see {LOGS / f'{name}.log'}"}
        return json.loads(out_file.read_text())
    except BenchError as exc:
        return {"error": str(exc)}
    finally:
        procs.stop(db, grace_s=10)


def run_storage(procs: Procs, quick: bool) -> dict[str, Any]:
    args = ["--histories", "1000,10000" if quick else "1000,50000", "--quick" if quick else "--break-test"]
    result = _on_secantus(procs, "storage", args, 300 if not quick else 120)
    if quick and "results" in result:
        result["note"] = "quick mode: 1k vs 10k history and no push-to-the-cap test"
    return result


def run_store_load(procs: Procs, quick: bool) -> dict[str, Any]:
    args = ["--join-histories", "1000,20000", "--quick"] if quick else ["--join-histories", "1000,100000"]
    result = _on_secantus(procs, "store_load", args, 600 if not quick else 180)
    if quick and "sends" in result:
        result["note"] = "quick mode: joins at 1k vs 20k messages"
    if "sends" in result:
        result["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _meta()["commit"]}
    return result


def run_search(procs: Procs, quick: bool) -> dict[str, Any]:
    args = ["--messages", "10000", "--quick"] if quick else ["--messages", "100000"]
    result = _on_secantus(procs, "search", args, 900 if not quick else 180)
    if "queries" in result:
        result["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": _meta()["commit"]}
    return result


def _stored_results(plan: Plan) -> tuple[Path, dict[str, Any]] | None:
    """The latest (or quick) results, for a run that measures one row again into them."""
    path = RESULTS / f"{'quick' if plan.quick else 'latest'}.json"
    if not path.exists():
        print(f"bench: {path} does not exist; run the whole benchmark first", file=sys.stderr)
        return None
    return path, json.loads(path.read_text())


def _store_results(path: Path, results: dict[str, Any]) -> str:
    """Write results and their report beside them; returns the report."""
    path.write_text(json.dumps(results, indent=1) + "\n")
    table = report.markdown(results)
    path.with_suffix(".md").write_text(table)
    return table


def _search_only(procs: Procs, plan: Plan) -> int:
    stored = _stored_results(plan)
    if stored is None:
        return 2
    path, results = stored
    log.info("search: latency with %s messages in one group", "10,000" if plan.quick else "100,000")
    try:
        results["search"] = run_search(procs, plan.quick)
    finally:
        procs.stop_all()
    _store_results(path, results)
    print("\n".join(report.search_table(results)))
    return 0


def _store_load_only(procs: Procs, plan: Plan) -> int:
    stored = _stored_results(plan)
    if stored is None:
        return 2
    path, results = stored
    log.info("storage: database commands per send, joins vs history")
    try:
        results["store_load"] = run_store_load(procs, plan.quick)
    finally:
        procs.stop_all()
    table = _store_results(path, results)
    if not plan.quick:
        report.update_readme(BENCH / "README.md", table)
    print("\n".join(report.store_load_tables(results)))
    return 0


def _idle_only(procs: Procs, plan: Plan, wanted: list[str]) -> int:
    stored = _stored_results(plan)
    if stored is None:
        return 2
    path, results = stored
    results["plan"].update({k: v for k, v in plan.__dict__.items() if k in ("many_conns", "idle_conns", "heartbeat_s", "probe_s")})
    try:
        spec, secret = write_spec(max(plan.idle_conns, plan.many_conns))
        for key in wanted:
            log.info("%s: idle connections", PEERS[key].label)
            results["peers"].setdefault(key, {"label": PEERS[key].label}).update(
                run_idle(procs, PEERS[key], plan, spec, secret))
    finally:
        procs.stop_all()
    results["meta"]["idle_measured"] = _meta()
    table = _store_results(path, results)
    if not plan.quick:
        report.update_readme(BENCH / "README.md", table)
    print("\n".join(report.idle_table(results)))
    return 0


def _lock():
    """Hold bench/.work/lock for this run (``bench/run`` takes it itself and says so)."""
    if os.environ.get("BENCH_LOCK_HELD"):
        return True
    WORK.mkdir(parents=True, exist_ok=True)
    fh = open(WORK / "lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh  # kept open (and so locked) until the process exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description="Benchmark this server next to its peers.")
    parser.add_argument("--quick", action="store_true", help="smoke check in ~2 minutes (writes results/quick.*)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--search-only", action="store_true",
                        help="measure search alone and put it into the existing results (latest or quick)")
    parser.add_argument("--store-load-only", action="store_true",
                        help="measure database commands per send and joins alone and put them into the existing results")
    parser.add_argument("--idle-only", action="store_true",
                        help="measure the idle-connections row alone (for --peers) and put it into the existing results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    lock = _lock()
    if lock is None:
        print("bench: another benchmark run is in progress; try again when it ends", file=sys.stderr)
        return 3
    plan = Plan.make(args.quick)
    procs = Procs()

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    if args.search_only:
        return _search_only(procs, plan)
    if args.store_load_only:
        return _store_load_only(procs, plan)
    if args.idle_only:
        return _idle_only(procs, plan, [k.strip() for k in args.peers.split(",") if k.strip()])
    meta = _meta() | {"interpreter": _interpreter(), "kernel_entry": _kernel_entry()}
    results: dict[str, Any] = {"meta": meta, "plan": plan.__dict__ | {"rooms": list(plan.rooms), "loads": list(plan.loads)},
                               "peers": {}, "redis": {}}
    try:
        spec, secret = write_spec(max(plan.idle_conns, plan.many_conns))
        wanted = [k.strip() for k in args.peers.split(",") if k.strip()]
        for key in wanted:
            peer = PEERS[key]
            if key == "this" and (why := this_server_missing()):
                log.warning("%s skipped: %s", peer.label, why)
                results["peers"][key] = {"label": peer.label, "skipped": why}
                continue
            log.info("%s", peer.label)
            results["peers"][key] = run_peer(procs, peer, plan, spec, secret)
        if not args.skip_redis:
            if not shutil.which("redis-server"):
                log.warning("redis-server not found: Redis scenario skipped")
            for key in wanted:
                peer = PEERS[key]
                if peer.redis and shutil.which("redis-server") and "skipped" not in results["peers"].get(key, {}):
                    log.info("%s with REDIS_URL", peer.label)
                    results["redis"][key] = run_redis(procs, peer, plan, spec, secret)
            if "this" in wanted and "skipped" not in results["peers"].get("this", {}):
                log.info("four nodes on Redis: messages each reads, a channel per group against one channel")
                results["channels"] = run_channels(procs)
        if args.skip_storage:
            results["storage"] = {"skipped": "--skip-storage"}
        else:
            log.info("storage: per-send cost vs history")
            results["storage"] = run_storage(procs, plan.quick)
            if "error" in results["storage"] or "skipped" in results["storage"]:
                log.warning("  storage: %s", results["storage"])
            log.info("storage: database commands per acked send, join latency vs history")
            results["store_load"] = run_store_load(procs, plan.quick)
            if "error" in results["store_load"] or "skipped" in results["store_load"]:
                log.warning("  store_load: %s", results["store_load"])
        if args.skip_search:
            results["search"] = {"skipped": "--skip-search"}
        else:
            log.info("search: latency with %s messages in one group", "10,000" if plan.quick else "100,000")
            results["search"] = run_search(procs, plan.quick)
    finally:
        procs.stop_all()
    results["meta"]["duration_s"] = time.monotonic() - started

    RESULTS.mkdir(exist_ok=True)
    stem = "quick" if plan.quick else "latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report.markdown(results)
    (RESULTS / f"{stem}.md").write_text(table)
    problem = report.plot(results, RESULTS / f"{stem}.png")
    if problem:
        log.warning("%s", problem)
    if not plan.quick and not args.skip_storage and set(wanted) == set(PEERS):
        report.update_readme(BENCH / "README.md", table)
    print(table)
    log.info("wrote %s.{md,json,png} in %.0f s", RESULTS / stem, results["meta"]["duration_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
