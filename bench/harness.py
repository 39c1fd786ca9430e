"""Process plumbing: start things pinned to a core, wait for ports, stop them all, run the swarm.

Everything started here gets its own process group, recorded in ``bench/.work/pids`` so that
``bench/run``'s trap can end what a crashed harness left behind (by id, nothing broader).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LOGS = WORK / "logs"
PIDS = WORK / "pids"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
SWARM = str(BENCH / "swarm" / "swarm.js")
SERVER_CORE = "1"
CLIENT_CORE = "0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step of the run failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Procs:
    """The processes of one run; ``stop_all`` ends every one still alive."""

    def __init__(self) -> None:
        self.running: dict[int, subprocess.Popen] = {}
        LOGS.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], *, core: str = SERVER_CORE,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(LOGS / f"{name}.log", "ab")
        log.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            ["taskset", "-c", core, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, start_new_session=True,
        )
        proc.bench_name = name  # type: ignore[attr-defined]
        log.close()
        self.running[proc.pid] = proc
        with open(PIDS, "a") as fh:
            fh.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc: subprocess.Popen, grace_s: float = 3.0) -> None:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Children that outlived their leader (none expected) go with the group.
        _signal_group(proc.pid, signal.SIGKILL)
        self.running.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            try:
                self.stop(proc, grace_s=1.0)
            except Exception:  # best effort on the way out
                pass
        PIDS.unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            name = getattr(proc, "bench_name", "process")
            raise BenchError(f"{name} exited with {proc.returncode}; see {LOGS / name}.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{getattr(proc, 'bench_name', 'process')} did not listen on {port} within {timeout_s:.0f}s")


def wait_quiet(pid: int, max_s: float = 15.0, busy_below: float = 0.05) -> float:
    """Wait until a process uses < ``busy_below`` of a core over 0.3 s (bounded); returns the wait."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        c0 = proc_cpu_s(pid)
        time.sleep(0.3)
        c1 = proc_cpu_s(pid)
        if c0 is None or c1 is None or (c1 - c0) / 0.3 < busy_below:
            break
    return time.monotonic() - t0


def run_swarm(procs: Procs, cfg: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Run one swarm scenario on the client core; its JSON result (``error`` set on failure)."""
    cfg = {"clkTck": CLK_TCK, **cfg}
    out = WORK / "swarm.out"
    out.unlink(missing_ok=True)
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, "node", SWARM, json.dumps(cfg)], cwd=ROOT, stdout=fh,
            stderr=open(LOGS / "swarm.log", "ab"), stdin=subprocess.DEVNULL, start_new_session=True,
        )
    proc.bench_name = "swarm"  # type: ignore[attr-defined]
    procs.running[proc.pid] = proc
    with open(PIDS, "a") as fh:
        fh.write(f"{proc.pid}\n")
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        procs.stop(proc, grace_s=0.5)
        return {"error": f"swarm did not finish within {timeout_s:.0f}s"}
    procs.stop(proc)
    lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"swarm exited {proc.returncode} without a result; see {LOGS / 'swarm.log'}"}
    return json.loads(lines[-1])


def scenario_main(doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                  run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """The command line of a scenario the harness runs against a database server:
    ``--uri``, ``--db-pid`` (for its CPU time) and ``--out`` (the JSON written), plus its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db-pid", type=int, required=True)
    parser.add_argument("--out", required=True)
    add_arguments(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
