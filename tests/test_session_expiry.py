"""Sessions end with their token: ``session_expiring``, ``refresh_token`` and the disconnect at ``exp``.

Tokens here live a few seconds, so every wait is short; times are read from the
tokens themselves (``exp``), and every "within" below is measured from them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest

from cluster.rate_limits import Bucket, RateLimits
from handlers.connections import Connection
from handlers.session_expiry import SessionExpiry
from server.keys import EVENTS
from tests.support.chat import ANA, BEN, MATHS, SECRET, ChatClient, make_settings, make_token

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"
TRANSPORTS = pytest.mark.parametrize("transport", ["websocket", "polling"])


def exp_of(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


def iso(exp: int) -> str:
    return datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Ends:
    """When (wall clock) and why a client's connection ended."""

    def __init__(self, client: ChatClient) -> None:
        self.at: float | None = None
        self.reason: Any = None

        @client.sio.event
        async def disconnect(reason=None):
            self.at, self.reason = time.time(), reason


async def until(predicate, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def ana_and_ben(connect, token: str, transport: str) -> tuple[ChatClient, ChatClient, Ends]:
    """Ana on ``token`` and ``transport``, Ben on websocket, both in the Maths room."""
    ana = await connect(ANA, token=token, transports=(transport,))
    ends = Ends(ana)
    ben = await connect(BEN)
    for client in (ana, ben):
        assert (await client.call("join_group", {"group_id": MATHS}))["ok"]
    return ana, ben, ends


async def assert_receives(sender: ChatClient, receiver: ChatClient, content: str) -> None:
    ack = await sender.call("send_message", {"group_id": MATHS, "content": content})
    assert ack["ok"], ack
    await receiver.wait_for(lambda: any(m["content"] == content for m in receiver.events("message")), timeout=5)


# -- the warning --

async def test_a_short_token_is_warned_at_once(connect):
    token = make_token(ANA, ttl=20)
    started = time.monotonic()
    ana = await connect(ANA, token=token)
    [warning] = await ana.wait_event("session_expiring", timeout=2)
    assert time.monotonic() - started < 1.5
    assert warning == {"expires_at": iso(exp_of(token))}


async def test_the_warning_comes_60_seconds_before_exp(connect):
    token = make_token(ANA, ttl=62)  # due in 2 s
    ana = await connect(ANA, token=token)
    await ana.settle()
    assert ana.events("session_expiring") == []
    [warning] = await ana.wait_event("session_expiring", timeout=5)
    assert time.time() >= exp_of(token) - 60
    assert warning == {"expires_at": iso(exp_of(token))}
    await ana.settle()
    assert len(ana.events("session_expiring")) == 1  # once per token


# -- the end --

@TRANSPORTS
async def test_without_a_refresh_the_connection_ends_within_2_s_of_exp(connect, transport):
    token = make_token(ANA, ttl=3)
    ana, ben, ends = await ana_and_ben(connect, token, transport)
    await assert_receives(ben, ana, "before exp")
    assert await until(lambda: ends.at is not None, timeout=6)
    assert exp_of(token) <= ends.at <= exp_of(token) + 2, (ends.at, exp_of(token))
    # A server-side Socket.IO disconnect: standard clients do not reconnect by themselves.
    assert ends.reason == ana.sio.reason.SERVER_DISCONNECT
    # Ben sees Ana go offline, and what he sends no longer reaches her.
    await ben.wait_for(lambda: {"group_id": MATHS, "user_id": ANA, "name": "Ana García", "online": False}
                       in ben.events("presence"), timeout=3)
    seen = len(ana.received)
    await assert_receives(ben, ben, "after exp")
    assert ana.received[seen:] == []


async def test_a_client_that_reconnects_by_itself_does_not_after_the_expiry(server_url):
    """socket.io-client and python-socketio reconnect after a transport close,
    not after a server-side Socket.IO disconnect: no reconnect loop on a dead token."""
    import socketio

    token = make_token(ANA, ttl=2)
    sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2)
    attempts: list[float] = []

    @sio.event
    async def connect_error(data):
        attempts.append(time.time())

    await sio.connect(server_url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    try:
        assert await until(lambda: not sio.connected, timeout=5)
        await asyncio.sleep(1)
        assert not sio.connected and attempts == []
    finally:
        await sio.disconnect()


# -- refreshing --

@TRANSPORTS
async def test_a_refreshed_session_lives_past_its_first_tokens_exp(connect, transport):
    first = make_token(ANA, ttl=3)
    ana, ben, ends = await ana_and_ben(connect, first, transport)
    second = make_token(ANA, ttl=3600)
    ack = await ana.call("refresh_token", {"token": second})
    assert ack == {"ok": True, "expires_at": iso(exp_of(second))}
    await until(lambda: time.time() > exp_of(first) + 2, timeout=6)
    assert ana.sio.connected and ends.at is None
    await assert_receives(ben, ana, "still here")
    assert (await ana.call("list_groups"))["ok"] is True


async def test_a_refresh_to_a_short_token_is_warned_after_its_ack(connect):
    ana = await connect(ANA, token=make_token(ANA, ttl=3600))
    short = make_token(ANA, ttl=30)
    ack = await ana.call("refresh_token", {"token": short})
    assert ack == {"ok": True, "expires_at": iso(exp_of(short))}
    [warning] = await ana.wait_event("session_expiring", timeout=2.5)
    assert warning == {"expires_at": iso(exp_of(short))}


async def test_refused_refreshes_keep_the_old_expiry(connect):
    token = make_token(ANA, ttl=4)
    ana, ben, ends = await ana_and_ben(connect, token, "websocket")
    refusals = {
        "another user's token": (make_token(BEN, ttl=3600), "forbidden"),
        "forged": (make_token(ANA, ttl=3600, secret=OTHER_SECRET), "unauthorized"),
        "expired": (make_token(ANA, ttl=-10), "unauthorized"),
        "not a JWT": ("not.a.jwt", "unauthorized"),
        "no sub": (make_token(None, ttl=3600), "unauthorized"),
    }
    for what, (bad, code) in refusals.items():
        ack = await ana.call("refresh_token", {"token": bad})
        assert ack["ok"] is False and ack["error"]["code"] == code, (what, ack)
    assert await until(lambda: ends.at is not None, timeout=7)
    assert exp_of(token) <= ends.at <= exp_of(token) + 2
    # Ben, whose own token is fine, is still served.
    assert (await ben.call("list_groups"))["ok"] is True


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "token"), ({"token": ""}, "token"), ({"token": 5}, "token"), ({"token": "x" * 8193}, "token"),
    ({"token": "a\ud800"}, "token"), ({"token": "t", "exp": 1}, "exp"),
])
async def test_refresh_token_payloads_are_validated(connect, payload, field):
    ana = await connect(ANA)
    ack = await ana.call("refresh_token", payload)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    assert field in ack["error"]["details"], ack


# -- one timer structure for all connections --

async def _raw_sign_in(http: aiohttp.ClientSession, ws_url: str, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(ws_url)
    assert (await ws.receive_str(timeout=10)).startswith("0{")
    await ws.send_str("40" + json.dumps({"token": token}))
    assert (await ws.receive_str(timeout=10)).startswith("40{")
    return ws


async def _until_ended(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> tuple[list[Any], float | None]:
    """Socket.IO packets (type, data) until the DISCONNECT (``41``), and when it came."""
    packets: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            message = await ws.receive(timeout=max(0.01, deadline - loop.time()))
        except TimeoutError:
            break
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        if message.data == "2":
            await ws.send_str("3")
            continue
        if message.data == "41":
            return packets, time.time()
        head = 3 if message.data.startswith("431") else 2  # the ack of the one call (id 1), or an event
        packets.append((message.data[:head], json.loads(message.data[head:])))
    return packets, None


@pytest.fixture
def settings():
    """Thousands of connections (and refreshes) of one user from one address."""
    off = Bucket(0, 0)
    return make_settings(max_connections_per_user=10_000, max_pending_per_ip=0,
                         rate_limits=RateLimits(send=off, other=off))


# One task shared by every connection of a moment, which ends when their groups are read.
TRANSIENT = {"MembershipTracker._load_pending"}


def _not_http(tasks: set[asyncio.Task]) -> list[str]:
    """Tasks that are not aiohttp's own per-connection and per-request handlers
    (nor the membership tracker's batch read, come and gone with the sign-ins)."""
    names = [t.get_coro().__qualname__ for t in tasks]
    return [name for name in names if not name.startswith("RequestHandler.") and name not in TRANSIENT]


async def test_thousands_of_expiring_connections_cost_no_task_each(server, server_url):
    count = 2000
    ws_url = server_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    events = server.app[EVENTS]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        token = make_token(ANA, ttl=3600)
        sockets = [await _raw_sign_in(http, ws_url, token)]  # the server's own tasks have started
        before = _not_http(asyncio.all_tasks())
        assert before.count("SessionExpiry._run") == 1, before
        for start in range(1, count, 200):
            sockets += await asyncio.gather(*(_raw_sign_in(http, ws_url, token)
                                              for _ in range(start, min(count, start + 200))))
        assert len(events.connections) == count and events.expiry.scheduled == count
        # aiohttp holds two tasks per WebSocket (its connection and request handlers, as
        # before); the other 1,999 connections' expiries add no task to the wheel's one.
        after = _not_http(asyncio.all_tasks())
        assert sorted(after) == sorted(before), (before, after)

        # Everyone moves to a token that ends in a few seconds.
        exp = int(time.time()) + 4
        short = jwt.encode({"sub": ANA, "exp": exp}, SECRET, algorithm="HS256")
        refresh = "421" + json.dumps(["refresh_token", {"token": short}])
        await asyncio.gather(*(ws.send_str(refresh) for ws in sockets))
        results = await asyncio.gather(*(_until_ended(ws, exp - time.time() + 4) for ws in sockets))
        for packets, at in results:
            assert packets == [("431", [{"ok": True, "expires_at": iso(exp)}]),
                               ("42", ["session_expiring", {"expires_at": iso(exp)}])], packets
            assert at is not None and exp <= at <= exp + 2, (at, exp)
        assert sorted(_not_http(asyncio.all_tasks())) == sorted(after)  # nor did ending them
        await asyncio.gather(*(ws.close() for ws in sockets))
    assert await until(lambda: not events.connections, timeout=5)
    assert events.expiry.scheduled == 0
    assert await until(lambda: "SessionExpiry._run" not in _not_http(asyncio.all_tasks()), timeout=3)


async def test_the_wheel_costs_well_under_a_kilobyte_per_connection():
    """Idle memory: what the wheel keeps per connection (its set entries and the
    bucket and heap shared with others), with exps spread over an hour."""
    count = 20_000
    now = int(time.time())
    conns = {f"sid-{i:08d}": Connection(f"sid-{i:08d}", ANA, None, expires_at=now + 120 + i % 3600)
             for i in range(count)}
    expiry = SessionExpiry(None, conns)  # type: ignore[arg-type]  # nothing is due: nothing is sent
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for conn in conns.values():
            await expiry.start(conn)
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
        await expiry.close()
    assert per_connection < 1024 * 0.25, per_connection
