"""Fixtures for a real server on the embedded store and real python-socketio clients."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import socketio

from server.app import create_app
from server.config import Settings
from storage.memory import MemoryStore

SECRET = "test-secret-that-is-long-enough-for-hs256-keys"

ANA = "65a000000000000000000001"
BEN = "65a000000000000000000002"
CAROL = "65a000000000000000000003"
DAN = "65a000000000000000000004"  # in no group
EVE = "65a000000000000000000005"  # valid id, no users document, in no group
MATHS = "65b0000000000000000000a1"  # Ana, Ben, Carol
PHYSICS = "65b0000000000000000000a2"  # Ana, Carol
NOWHERE = "65b0000000000000000000ff"  # no such group

NAMES = {ANA: "Ana García", BEN: "Ben Okafor", CAROL: "Carol", DAN: "Dan Wu"}
# The wider application's users and study_groups, the same in every store.
USERS = [(ANA, "  Ana ", "García "), (BEN, "Ben", "Okafor"), (CAROL, "Carol", ""), (DAN, "Dan", "Wu")]
GROUPS = [(MATHS, "Maths", [ANA, BEN, CAROL]), (PHYSICS, "Physics", [ANA, CAROL])]

# Every field of the message object (docs/protocol.md).
MESSAGE_FIELDS = {
    "type", "kind", "id", "seq", "rev", "group_id", "sender_id", "sender", "sender_name",
    "content", "timestamp", "client_msg_id", "edited_at", "deleted", "mentions",
    "reply_to", "reactions", "pinned", "answer_id", "attachments", "deleted_by",
}


def make_token(user_id: str, *, secret: str = SECRET, ttl: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "exp": now + ttl, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def seeded_store() -> MemoryStore:
    store = MemoryStore()
    for user_id, full_name, last_name in USERS:
        store.add_user(user_id, full_name, last_name)
    for group_id, name, members in GROUPS:
        store.add_group(group_id, name, members)
    return store


def make_settings(**overrides: Any) -> Settings:
    base = Settings(host="127.0.0.1", port=0, mongodb_uri="memory://", jwt_secret=SECRET)
    return dataclasses.replace(base, **overrides)


async def refused(server_url: str, *, auth: Any = None, headers: dict[str, str] | None = None,
                  url: str | None = None) -> Any:
    """Try a handshake that must fail; return what ``connect_error`` received."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    @sio.event
    async def connect_error(data):
        errors.append(data)

    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(url or server_url, auth=auth, headers=headers or {},
                          transports=["websocket"], wait_timeout=10)
    assert not sio.connected
    if sio.eio.state == "connected":
        await sio.disconnect()
    assert len(errors) == 1, errors
    return errors[0]


class ChatClient:
    """A python-socketio ``AsyncClient`` that records every server event it receives."""

    def __init__(self, sio: socketio.AsyncClient, user_id: str | None) -> None:
        self.sio = sio
        self.user_id = user_id
        self.received: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

        @sio.on("*")
        async def _record(event: str, *args: Any) -> None:
            self.received.append((event, args[0] if len(args) == 1 else args))
            self._changed.set()

    async def call(self, event: str, *args: Any, timeout: float = 10) -> Any:
        if len(args) <= 1:
            return await self.sio.call(event, args[0] if args else None, timeout=timeout)
        return await self.sio.call(event, tuple(args), timeout=timeout)

    def events(self, name: str) -> list[Any]:
        return [data for event, data in self.received if event == name]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; received so far: {self.received!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_event(self, name: str, count: int = 1, timeout: float = 10) -> list[Any]:
        await self.wait_for(lambda: len(self.events(name)) >= count, timeout)
        return self.events(name)

    async def settle(self) -> None:
        """Round-trip once, so anything the server sent before now has arrived."""
        await self.call("list_groups")


@pytest.fixture
def backend() -> str:
    """Which store the ``server`` fixture uses; modules override it to run on both."""
    return "memory"


@pytest.fixture
async def store(backend, request):
    """The seeded store for ``backend``: the same users and groups in each."""
    if backend == "memory":
        return seeded_store()
    from storage.mongo import MongoStore
    from tests.support.mongo import seed_mongo

    uri, db_name = request.getfixturevalue("mongo_uri"), request.getfixturevalue("mongo_db_name")
    await seed_mongo(uri, db_name, users=USERS, groups=GROUPS)
    return MongoStore(uri, db_name)


both_stores = pytest.fixture(params=["memory", "mongo"])(lambda request: request.param)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def server(aiohttp_server, settings, store):
    app = create_app(settings, storage=store)
    return await aiohttp_server(app)


@pytest.fixture
def server_url(server) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def connect(server_url):
    """``await connect(user_id)`` → a connected ``ChatClient``; all are disconnected at teardown."""
    clients: list[socketio.AsyncClient] = []

    async def _connect(
        user_id: str | None = ANA,
        *,
        token: str | None = None,
        auth: Any = ...,
        headers: dict[str, str] | None = None,
        # python-socketio's client on polling waits ~30 s to disconnect; the
        # polling transport is covered with the JavaScript client instead.
        transports: tuple[str, ...] = ("websocket",),
        url: str | None = None,
    ) -> ChatClient:
        sio = socketio.AsyncClient(reconnection=False)
        clients.append(sio)
        client = ChatClient(sio, user_id)
        if auth is ...:
            auth = {"token": token or make_token(user_id)} if (token or user_id) else None
        await sio.connect(
            url or server_url,
            auth=auth,
            headers=headers or {},
            transports=list(transports),
            wait_timeout=10,
        )
        return client

    yield _connect
    for sio in clients:
        if sio.connected:
            await sio.disconnect()
