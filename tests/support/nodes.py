"""Chat server nodes as real processes (``python -m server``), for multi-node and fault tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import socketio

from server.config import SETTINGS

from .chat import ChatClient, make_token
from .ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class Node:
    """One server process on its own port."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.name = name
        self.env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
        self.env.update(env, PORT=str(self.port), HOST="127.0.0.1")
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    module = "server"  # what ``python -m`` runs

    def start(self, timeout: float = 30) -> Node:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
            if self.status("/readyz") == 200:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready: {self.log()[-3000:]}")

    def status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def node_factory(tmp_path):
    """``node_factory(env, name, port=None)`` → a started ``Node``; all are stopped at teardown."""
    started: list[Node] = []

    def _start(env: dict[str, str], name: str, port: int | None = None) -> Node:
        node = Node(env, tmp_path, name, port=port)
        started.append(node)
        return node.start()

    yield _start
    for node in started:
        node.stop()


def node_starter(env: dict[str, str], factory) -> Callable[..., list[Node]]:
    """``start(count, **more_env)`` → that many new nodes named node0, node1, ... in
    order, each with ``env`` and ``more_env`` (``factory`` is ``node_factory``)."""
    made = 0

    def _start(count: int, **more: str) -> list[Node]:
        nonlocal made
        nodes = [factory({**env, **more}, f"node{made + i}") for i in range(count)]
        made += count
        return nodes

    return _start


@pytest.fixture
async def clients():
    """``await clients(node, user_id, transports=...)`` → a connected ``ChatClient`` on any URL holder."""
    made: list[socketio.AsyncClient] = []

    async def _connect(node, user_id: str, transports=("websocket",)) -> ChatClient:
        sio = socketio.AsyncClient(reconnection=False)
        made.append(sio)
        client = ChatClient(sio, user_id)
        await sio.connect(node.url, auth={"token": make_token(user_id)}, transports=list(transports),
                          wait_timeout=10)
        return client

    yield _connect
    for sio in made:
        if sio.connected:
            await sio.disconnect()


def metric(node: Node, name: str) -> float:
    """A gauge or counter (``name`` or ``name_total``) of ``node``'s ``/metrics``, unlabelled."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))
