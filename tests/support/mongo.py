"""Pytest fixtures for the MongoDB tests: a SecantusDB server, or ``MONGODB_URI``.

Without ``MONGODB_URI`` in the environment, one ``secantusd-py`` daemon (a
MongoDB-wire server from PyPI, test-only) runs for the whole session on a free
port with its data in a temporary directory. With it, the tests use that
server instead. Either way every test gets its own database, dropped after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import PyMongoError

from .ports import free_port

# `python -m secantus` is the `secantusd-py` daemon, run by this interpreter.
DAEMON = [sys.executable, "-m", "secantus"]
START_TIMEOUT_S = 30.0


def secantus_uri(port: int, **options: object) -> str:
    # SecantusDB does not support retryable writes.
    extra = "".join(f"&{key}={value}" for key, value in options.items())
    return f"mongodb://127.0.0.1:{port}/?retryWrites=false{extra}"


class SecantusProcess:
    """A ``secantusd-py`` daemon that can be stopped and started again on its data."""

    def __init__(self, storage_path: Path, port: int | None = None, *, test_commands: bool = False) -> None:
        self.storage_path = storage_path
        self.test_commands = test_commands
        self.port = port or free_port()
        self.log_path = storage_path.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return secantus_uri(self.port)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    *DAEMON,
                    "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--storage-path", str(self.storage_path),
                    "--log-level", "WARNING",
                    *(["--enable-test-commands"] if self.test_commands else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"SecantusDB exited: {self.log_path.read_text()[-2000:]}")
            try:
                with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except PyMongoError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SecantusDB did not answer on port {self.port}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI for the session: ``MONGODB_URI``, or a SecantusDB daemon of our own."""
    env_uri = os.environ.get("MONGODB_URI", "")
    if env_uri and not env_uri.startswith("memory://"):
        yield env_uri
        return
    for attempt in range(3):
        # Another process may take the free port before the daemon binds it.
        server = SecantusProcess(tmp_path_factory.mktemp("secantus") / "data")
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def mongo_db_name(mongo_uri: str) -> Iterator[str]:
    """A database of the test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield name
    # A synchronous client: the test's event loop is already gone here.
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


async def seed_mongo(
    uri: str,
    db_name: str,
    users: Sequence[tuple[str, str | None, str | None]] = (),
    groups: Sequence[tuple[str, str, Sequence[str]]] = (),
) -> None:
    """Insert ``users`` (id, full_name, last_name) and ``study_groups`` (id, name, members).

    A name part given as ``None`` is left out of the document.
    """
    client: AsyncMongoClient[dict] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        db = client[db_name]
        if users:
            docs = []
            for user_id, full_name, last_name in users:
                doc: dict[str, object] = {"_id": ObjectId(user_id)}
                if full_name is not None:
                    doc["full_name"] = full_name
                if last_name is not None:
                    doc["last_name"] = last_name
                docs.append(doc)
            await db.users.insert_many(docs)
        if groups:
            await db.study_groups.insert_many(
                [
                    {"_id": ObjectId(gid), "name": name, "members": [ObjectId(m) for m in members]}
                    for gid, name, members in groups
                ]
            )
    finally:
        await client.close()
