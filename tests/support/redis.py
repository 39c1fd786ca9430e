"""A redis-server of the test session's own, on a free port, keeping nothing on disk."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ports import free_port


class RedisProcess:
    """A ``redis-server`` that a test can stop and start again on the same port."""

    kind = "single"

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make test` (it installs Debian's redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # more command-line options
        self.command: list[str] | None = None  # instead of the usual options (a sentinel's config file)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # A replica still writes the snapshot it syncs from: into the temporary directory, not the cwd.
        options = self.command or ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", tempfile.gettempdir(),
                                   "--dbfilename", f"redis-test-{self.port}.rdb", *self.extra]
        self._proc = subprocess.Popen(
            [self.binary, *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break  # it exited (its port was taken)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A fresh redis-server for one test."""
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_cluster_port() -> int:
    """A port below 55535 that is free, and whose cluster bus port (+10000) is free too."""
    return free_port(cluster_bus=True)


class RedisClusterProcesses:
    """A Redis Cluster of three masters, each with one replica: six ``redis-server``
    processes in cluster mode, joined with ``redis-cli --cluster create``. A master
    that stops answering is replaced by its replica after about a second."""

    kind = "cluster"

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed: run `make test` (it installs Debian's redis-server)")
        self.cli = cli
        self.workdir = workdir
        self.nodes = [RedisProcess(free_cluster_port()) for _ in range(masters * 2)]
        self.masters = masters

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for i in range(len(self.nodes)):
            for attempt in range(5):  # a port another worker took meanwhile: another one
                node = self.nodes[i]
                directory = self.workdir / f"redis-{node.port}"
                directory.mkdir(parents=True, exist_ok=True)
                node.extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf"),
                              "--cluster-node-timeout", "1000", "--dir", str(directory),
                              "--logfile", str(directory / "redis.log"), "--repl-diskless-sync-delay", "0"]
                try:
                    node.start()
                    break
                except RuntimeError:
                    node.stop()
                    if attempt == 4:
                        raise
                    self.nodes[i] = RedisProcess(free_cluster_port())
        subprocess.run(
            [self.cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60,
        )
        self.wait_ok(self.nodes)
        # A replica can take over only once it holds its master's data.
        deadline = time.monotonic() + 30
        while not all("master_link_status:up" in self.info(n, "info", "replication")
                      for n in self.nodes if "role:slave" in self.info(n, "info", "replication")):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster's replicas did not sync")
            time.sleep(0.1)

    def info(self, node: RedisProcess, *command: str) -> str:
        result = subprocess.run([self.cli, "-p", str(node.port), *command], capture_output=True, text=True,
                                timeout=10)
        return result.stdout

    def wait_ok(self, nodes: list[RedisProcess], timeout: float = 30) -> None:
        """Until every given node says the cluster is ok and knows every slot's master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.info(n, "cluster", "info") for n in nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def master_of(self, key: str) -> RedisProcess:
        """The node that holds ``key``'s hash slot now."""
        slot = int(self.info(self.live()[0], "cluster", "keyslot", key).strip())
        for line in self.info(self.live()[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no master holds the slot of {key!r}")

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.running]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelProcesses:
    """A master, its replica and one Redis Sentinel watching them (quorum 1): the
    sentinel promotes the replica about a second after the master stops answering."""

    kind = "sentinel"
    service = "chatqueue"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master, self.replica = RedisProcess(), RedisProcess()
        self.sentinel = RedisProcess()
        self.nodes = [self.master, self.replica]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"

    def start(self) -> None:
        self.master.extra = ["--repl-diskless-sync-delay", "0"]
        self.master.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-sync-delay", "0"]
        self.replica.start()
        config = self.workdir / f"sentinel-{self.sentinel.port}.conf"
        config.write_text(
            f"port {self.sentinel.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )
        self.sentinel.command = [str(config), "--sentinel"]
        self.sentinel.start()
        deadline = time.monotonic() + 30
        while "master_link_status:up" not in _cli(self.replica.port, "info", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.1)

    def master_of(self, key: str) -> RedisProcess:
        """The node the sentinel names as master now."""
        reply = _cli(self.sentinel.port, "sentinel", "get-master-addr-by-name", self.service).split()
        return next(n for n in self.nodes if str(n.port) == reply[1])

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.running]

    def stop(self) -> None:
        for node in (self.sentinel, *self.nodes):
            node.stop()


def _cli(port: int, *command: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True,
                          timeout=10).stdout


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinelProcesses]:
    """A fresh master, replica and sentinel for one test."""
    queue = RedisSentinelProcesses(tmp_path)
    try:
        queue.start()
        yield queue
    finally:
        queue.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    """A fresh Redis Cluster (three masters, three replicas) for one test."""
    cluster = RedisClusterProcesses(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


Queue = RedisProcess | RedisClusterProcesses | RedisSentinelProcesses


@pytest.fixture(params=["single", "cluster"])
def queue(request: pytest.FixtureRequest) -> Queue:
    """The Redis that nodes share: one redis-server, or a Redis Cluster of three
    masters and three replicas (sharded pub/sub); ``.kind`` says which. A test
    may ask for ``sentinel`` too (a master, a replica and a Redis Sentinel)."""
    return request.getfixturevalue(f"redis_{'server' if request.param == 'single' else request.param}")


def queue_env(queue: Queue) -> dict[str, str]:
    """The settings that point a node at ``queue``."""
    return {"REDIS_URL": queue.url, "REDIS_CLUSTER": str(queue.kind == "cluster").lower()}
