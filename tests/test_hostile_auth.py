"""Hostile handshakes and HTTP requests: tokens the JWT library chokes on, one user
holding too many connections, forged forwarded headers, a protected /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.keys import SIO
from storage.memory import MemoryStore
from tests.support.chat import (
    ANA,
    BEN,
    GROUPS,
    MATHS,
    make_settings,
    make_token,
    refused,
)

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

# -- tokens PyJWT raises something other than InvalidTokenError for --

LONE_SURROGATE = "\ud800"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(alg: str) -> str:
    """A token that names ``alg`` in its header, with a made-up signature."""
    claims = {"sub": ANA, "exp": int(time.time()) + 3600}
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'x' * 64)}"


def assert_refused_as(error: Any, code: str) -> None:
    assert isinstance(error, dict) and isinstance(error.get("data"), dict), error
    assert error["data"]["code"] == code, error
    assert isinstance(error["data"]["message"], str) and error["data"]["message"].strip()


def pending_handshakes(server) -> int:
    """Handshakes python-socketio still waits on (each holds memory and slows every event)."""
    return sum(len(sids) for sids in server.app[SIO].manager.pending_connect.values())


async def test_token_with_a_lone_surrogate_is_refused_at_once(server, server_url, connect):
    for _ in range(5):
        assert_refused_as(await refused(server_url, auth={"token": LONE_SURROGATE}), "unauthorized")
        assert_refused_as(await refused(server_url, auth={"token": f"a{LONE_SURROGATE}.b.c"}), "unauthorized")
    assert pending_handshakes(server) == 0
    ben = await connect(BEN)
    assert (await ben.call("list_groups"))["ok"] is True


async def test_bearer_header_with_a_raw_non_utf8_byte_is_401(server):
    """Raw bytes on the wire (aiohttp's client only sends str headers)."""
    for path in ("/study-groups", f"/study-groups/{MATHS}/messages"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer ab\xffcd.ef.gh\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), response[:200]
        envelope = json.loads(body)
        assert envelope["ok"] is False and envelope["error"]["code"] == "unauthorized"


def public_pem(family: str) -> str:
    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if family == "rsa"
                else ec.generate_private_key(ec.SECP256R1()))
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("family, forged_alg", [("rsa", "ES256"), ("ec", "RS256")])
class TestForgedAlgorithm:
    """``JWT_ALGORITHMS=RS256,ES256``: a token claiming the algorithm of the other
    key family makes PyJWT load the key as that family: ``InvalidKeyError``."""

    @pytest.fixture
    def settings(self, family):
        return make_settings(jwt_secret=None, jwt_public_key=public_pem(family), jwt_algorithms=("RS256", "ES256"))

    async def test_handshake_is_refused(self, server, server_url, forged_alg):
        for _ in range(5):
            assert_refused_as(await refused(server_url, auth={"token": forged(forged_alg)}), "unauthorized")
        assert pending_handshakes(server) == 0

    async def test_http_is_401(self, server_url, forged_alg):
        async with aiohttp.ClientSession() as http, http.get(f"{server_url}/study-groups",
                                headers={"Authorization": f"Bearer {forged(forged_alg)}"}) as resp:
            assert resp.status == 401
            body = await resp.json()
        assert body["ok"] is False and body["error"]["code"] == "unauthorized"


class BrokenUsers(MemoryStore):
    """A store whose user lookup fails in a way nobody planned for."""

    async def get_user(self, user_id: str) -> Any:
        raise RuntimeError("users collection returned something unreadable")


class TestConnectHandlerFailure:
    @pytest.fixture
    def store(self):
        store = BrokenUsers()
        for group_id, name, members in GROUPS:
            store.add_group(group_id, name, members)
        return store

    async def test_an_unexpected_error_refuses_the_connection(self, server, server_url):
        for _ in range(3):
            error = await refused(server_url, auth={"token": make_token(ANA)})
            assert_refused_as(error, "internal")
        assert pending_handshakes(server) == 0


# -- connections per user --

class TestConnectionsPerUser:
    @pytest.fixture
    def settings(self):
        return make_settings(max_connections_per_user=3)

    async def test_the_next_connection_is_refused_and_a_freed_slot_is_reusable(self, server_url, connect):
        held = [await connect(ANA) for _ in range(3)]
        error = await refused(server_url, auth={"token": make_token(ANA)})
        assert_refused_as(error, "too_many_connections")
        # Another user is not affected.
        ben = await connect(BEN)
        assert (await ben.call("list_groups"))["ok"] is True
        # Closing one frees its slot.
        await held[0].sio.disconnect()
        for _ in range(50):
            try:
                again = await connect(ANA)
                break
            except socketio.exceptions.ConnectionError:
                await asyncio.sleep(0.1)
        assert (await again.call("list_groups"))["ok"] is True

    async def test_simultaneous_handshakes_cannot_exceed_the_cap(self, server_url):
        made = [socketio.AsyncClient(reconnection=False) for _ in range(10)]

        async def attempt(sio: socketio.AsyncClient) -> bool:
            try:
                await sio.connect(server_url, auth={"token": make_token(ANA)}, transports=["websocket"],
                                  wait_timeout=10)
                return True
            except socketio.exceptions.ConnectionError:
                return False

        try:
            accepted = await asyncio.gather(*(attempt(s) for s in made))
            assert sum(accepted) == 3
        finally:
            for sio in made:
                if sio.connected:
                    await sio.disconnect()


def test_default_cap_is_twenty():
    assert make_settings().max_connections_per_user == 20


# -- forwarded headers --

async def handshake_status(server_url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{server_url}/socket.io/?EIO=4&transport=polling", headers=headers) as resp:
        return resp.status


async def test_forwarded_host_does_not_make_an_origin_allowed(server_url):
    assert await handshake_status(server_url, {"Origin": "http://evil.example"}) == 400
    forged_headers = {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"}
    assert await handshake_status(server_url, forged_headers) == 400
    forged_headers["X-Forwarded-Proto"] = "http"
    assert await handshake_status(server_url, forged_headers) == 400
    # The page's own origin still is allowed.
    assert await handshake_status(server_url, {"Origin": server_url}) == 200


class TestBehindAProxy:
    @pytest.fixture
    def settings(self):
        return make_settings(trust_proxy=True)

    async def test_forwarded_host_names_the_page_origin(self, server_url):
        headers = {"Origin": "https://chat.example", "X-Forwarded-Host": "chat.example",
                   "X-Forwarded-Proto": "https"}
        assert await handshake_status(server_url, headers) == 200
        assert await handshake_status(server_url, {"Origin": "https://evil.example", "X-Forwarded-Host":
                                                   "chat.example", "X-Forwarded-Proto": "https"}) == 400


def test_client_address_reads_forwarded_for_only_when_trusted():
    from server.app import client_address

    # The transport puts the TCP peer's address in REMOTE_ADDR.
    environ = {"HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.0.0.2", "REMOTE_ADDR": "10.0.0.9"}
    assert client_address(environ, trust_proxy=False) == "10.0.0.9"
    assert client_address(environ, trust_proxy=True) == "203.0.113.7"
    assert client_address({"REMOTE_ADDR": "10.0.0.9"}, trust_proxy=True) == "10.0.0.9"
    assert client_address({"HTTP_X_FORWARDED_FOR": " , "}, trust_proxy=True) == "unknown"
    assert client_address({"REMOTE_ADDR": ""}, trust_proxy=False) == "unknown"


# -- /metrics --

class TestMetricsToken:
    TOKEN = "metrics-token-0123456789abcdef"

    @pytest.fixture
    def settings(self):
        return make_settings(metrics_token=self.TOKEN)

    @pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic x", f"Bearer {TOKEN}x", "Bearer "])
    async def test_without_the_token_is_401(self, server_url, header):
        headers = {"Authorization": header} if header is not None else {}
        async with aiohttp.ClientSession() as http, http.get(f"{server_url}/metrics", headers=headers) as resp:
            assert resp.status == 401
            body = await resp.json()
        assert body["ok"] is False and body["error"]["code"] == "unauthorized"

    async def test_with_the_token_is_served(self, server_url):
        async with aiohttp.ClientSession() as http, http.get(f"{server_url}/metrics", headers={"Authorization": f"Bearer {self.TOKEN}"}) as resp:
            assert resp.status == 200
            assert "chat_connected_clients" in await resp.text()


async def test_metrics_are_open_without_a_token_setting(server_url):
    async with aiohttp.ClientSession() as http, http.get(f"{server_url}/metrics") as resp:
        assert resp.status == 200


# -- the settings --

def test_settings_from_the_environment():
    from server.config import ConfigError, Settings

    base = {"MONGODB_URI": "memory://", "JWT_SECRET": "x" * 40}
    s = Settings.from_env(base)
    assert (s.max_connections_per_user, s.trust_proxy, s.metrics_token) == (20, False, None)
    s = Settings.from_env({**base, "MAX_CONNECTIONS_PER_USER": "5", "TRUST_PROXY": "true", "METRICS_TOKEN": "m" * 20})
    assert (s.max_connections_per_user, s.trust_proxy, s.metrics_token) == (5, True, "m" * 20)
    assert "m" * 20 not in repr(s)
    for name, value in (("MAX_CONNECTIONS_PER_USER", "0"), ("MAX_CONNECTIONS_PER_USER", "many"),
                        ("TRUST_PROXY", "maybe")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})
