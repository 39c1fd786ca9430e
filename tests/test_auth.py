"""The Socket.IO handshake: which tokens open a connection, and whose identity it carries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.chat import ANA, BEN, EVE, MATHS, SECRET, make_settings, make_token, refused

OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(user_id: str = ANA, ttl: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user_id, "iat": now, "exp": now + ttl, **extra}


def unsigned_token(claims: dict[str, Any]) -> str:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_by_hand(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token with any key (PyJWT refuses PEM text as an HMAC secret)."""
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def assert_unauthorized(error: Any) -> None:
    """python-socketio hands ``connect_error`` the whole packet: ``{"message", "data"}``;
    ``data`` is what socket.io-client exposes as ``err.data``."""
    assert isinstance(error, dict) and "data" in error, error
    data = error["data"]
    assert isinstance(data, dict) and set(data) == {"code", "message"}, data
    assert data["code"] == "unauthorized"
    assert isinstance(data["message"], str) and data["message"].strip()


async def assert_still_serving(connect) -> None:
    ben = await connect(BEN)
    groups = await ben.call("list_groups")
    assert groups["ok"] is True and [g["id"] for g in groups["groups"]] == [MATHS]


async def who_am_i(client) -> dict[str, Any]:
    """The identity the server gives this connection: the sender of a message it sends."""
    ack = await client.call("send_message", {"group_id": MATHS, "content": "who am I?"})
    assert ack["ok"], ack
    return ack["message"]


# -- where the token may come from --

async def test_token_in_auth_is_accepted(connect):
    ana = await connect(ANA, auth={"token": make_token(ANA)})
    message = await who_am_i(ana)
    assert message["sender_id"] == ANA


async def test_token_in_authorization_bearer_header_is_accepted(connect):
    ben = await connect(BEN, auth=None, headers={"Authorization": f"Bearer {make_token(BEN)}"})
    message = await who_am_i(ben)
    assert message["sender_id"] == BEN and message["sender"] == "Ben Okafor"


async def test_token_only_in_the_query_string_is_refused(connect, server_url):
    token = make_token(ANA)
    for name in ("token", "access_token", "auth"):
        error = await refused(server_url, url=f"{server_url}?{name}={token}")
        assert_unauthorized(error)
    await assert_still_serving(connect)


# -- tokens that must be refused --

def _bad_handshakes() -> list[Any]:
    now = int(time.time())
    cases = {
        "no-auth-at-all": dict(auth=None),
        "empty-auth": dict(auth={}),
        "empty-token": dict(auth={"token": ""}),
        "token-not-a-string": dict(auth={"token": 12345}),
        "garbage": dict(auth={"token": "not-a-jwt"}),
        "three-garbage-parts": dict(auth={"token": "aaa.bbb.ccc"}),
        "other-secret": dict(auth={"token": make_token(ANA, secret=OTHER_SECRET)}),
        "expired": dict(auth={"token": make_token(ANA, ttl=-30)}),
        "no-exp": dict(auth={"token": make_token(ANA, exp=None)}),
        "exp-not-a-number": dict(auth={"token": make_token(ANA, exp="tomorrow")}),
        "no-sub": dict(auth={"token": make_token(ANA, sub=None)}),
        "sub-not-hex": dict(auth={"token": make_token("zz" * 12)}),
        "sub-23-chars": dict(auth={"token": make_token(ANA[:23])}),
        "sub-25-chars": dict(auth={"token": make_token(ANA + "1")}),
        "sub-a-name": dict(auth={"token": make_token("ana@example.com")}),
        "sub-an-integer": dict(auth={"token": jwt.encode({"sub": 12345, "exp": now + 3600}, SECRET)}),
        "alg-none": dict(auth={"token": unsigned_token(_claims())}),
        "tampered-sub": dict(auth={"token": _swap_payload(make_token(BEN), _claims(ANA))}),
        "bearer-header-other-secret": dict(
            headers={"Authorization": f"Bearer {make_token(ANA, secret=OTHER_SECRET)}"}),
        "bearer-header-expired": dict(headers={"Authorization": f"Bearer {make_token(ANA, ttl=-30)}"}),
        "basic-scheme-header": dict(headers={"Authorization": f"Basic {make_token(ANA)}"}),
    }
    return [pytest.param(kwargs, id=name) for name, kwargs in cases.items()]


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize("handshake", _bad_handshakes())
async def test_bad_tokens_are_refused_with_unauthorized(connect, server_url, handshake):
    assert_unauthorized(await refused(server_url, **handshake))
    await assert_still_serving(connect)


async def test_a_refused_client_gets_no_event_handled(connect, server_url):
    """Events sent on a refused connection are never handled nor answered: the server
    closes the connection (as the reference server does for a namespace the client is
    not connected to)."""
    sneaky = json.dumps(["send_message", {"group_id": MATHS, "content": "sneaky"}])
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
        try:
            assert (await ws.receive_str(timeout=10)).startswith("0{")
            await ws.send_str("40" + json.dumps({"token": make_token(ANA, secret=OTHER_SECRET)}))
            reply = await ws.receive_str(timeout=10)
            assert reply.startswith("44"), reply
            assert_unauthorized(json.loads(reply[2:]))
            await ws.send_str("42" + sneaky)
            await ws.send_str("421" + sneaky)
            frames = []
            while (after := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                frames.append(after.data)
            assert after.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), after
            assert frames in ([], ["1"]), frames  # at most Engine.IO's CLOSE packet; no ack
        finally:
            await ws.close()
    ana = await connect(ANA)
    assert (await ana.call("get_history", {"group_id": MATHS}))["messages"] == []


# -- who the connection is --

async def test_identity_and_name_come_from_the_token_and_users(connect):
    ben = await connect(BEN)
    message = await who_am_i(ben)
    assert message["sender_id"] == BEN
    assert message["sender"] == message["sender_name"] == "Ben Okafor"
    # sub in upper case is the same user, answered in lower case
    ana = await connect(ANA, token=make_token(ANA.upper()))
    message = await who_am_i(ana)
    assert message["sender_id"] == ANA and message["sender"] == "Ana García"


async def test_a_user_without_a_users_document_is_accepted_without_a_name(connect, store):
    eve = await connect(EVE)
    assert await eve.call("list_groups") == {"ok": True, "groups": []}
    # Put Eve in a group (the wider application's data) to see what her messages carry.
    store.add_group("65b0000000000000000000e1", "Eve's club", [EVE])
    ack = await eve.call("send_message", {"group_id": "65b0000000000000000000e1", "content": "hi"})
    assert ack["ok"], ack
    assert ack["message"]["sender_id"] == EVE
    assert ack["message"]["sender"] == ack["message"]["sender_name"] == EVE


async def test_a_connection_ends_with_its_token_and_a_reconnect_is_refused(connect, server_url):
    """v2: no connection outlives its token (tests/test_session_expiry.py has the details)."""
    token = make_token(ANA, ttl=2)
    ana = await connect(ANA, token=token)
    message = await who_am_i(ana)
    assert message["sender_id"] == ANA
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while ana.sio.connected and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert not ana.sio.connected
    assert_unauthorized(await refused(server_url, auth={"token": token}))


# -- issuer and audience --

ISSUER = "https://auth.learnify.example"
AUDIENCE = "studychat"


class TestIssuerAndAudience:
    @pytest.fixture
    def settings(self):
        return make_settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)

    @pytest.mark.parametrize(
        "claims",
        [
            {"iss": ISSUER, "aud": AUDIENCE},
            {"iss": ISSUER, "aud": ["another-app", AUDIENCE]},
        ],
        ids=["exact", "audience-in-a-list"],
    )
    async def test_right_issuer_and_audience_are_accepted(self, connect, claims):
        ana = await connect(ANA, token=make_token(ANA, **claims))
        assert (await who_am_i(ana))["sender_id"] == ANA

    @pytest.mark.parametrize(
        "claims",
        [
            {"iss": "https://evil.example", "aud": AUDIENCE},
            {"aud": AUDIENCE},
            {"iss": ISSUER, "aud": "another-app"},
            {"iss": ISSUER},
            {"iss": ISSUER, "aud": ["another-app"]},
            {},
        ],
        ids=["wrong-iss", "missing-iss", "wrong-aud", "missing-aud", "aud-list-without-ours", "neither"],
    )
    async def test_wrong_or_missing_issuer_or_audience_is_refused(self, connect, server_url, claims):
        assert_unauthorized(await refused(server_url, auth={"token": make_token(ANA, **claims)}))
        await connect(BEN, token=make_token(BEN, iss=ISSUER, aud=AUDIENCE))


# -- public-key tokens --

@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public_pem


class TestRS256:
    @pytest.fixture
    def settings(self, rsa_keys):
        _, public_pem = rsa_keys
        return make_settings(jwt_secret=None, jwt_public_key=public_pem, jwt_algorithms=("RS256",))

    async def test_token_signed_with_the_private_key_is_accepted(self, connect, rsa_keys):
        private, _ = rsa_keys
        ana = await connect(ANA, token=jwt.encode(_claims(ANA), private, algorithm="RS256"))
        assert (await who_am_i(ana))["sender_id"] == ANA

    async def test_hs256_token_signed_with_the_public_key_text_is_refused(self, connect, server_url, rsa_keys):
        _, public_pem = rsa_keys
        forged = hs256_by_hand(_claims(ANA), public_pem.encode())
        assert_unauthorized(await refused(server_url, auth={"token": forged}))
        await assert_still_serving_rs256(connect, rsa_keys)

    @pytest.mark.parametrize("kind", ["other-private-key", "shared-secret", "alg-none", "expired"])
    async def test_other_tokens_are_refused(self, connect, server_url, rsa_keys, kind):
        private, _ = rsa_keys
        if kind == "other-private-key":
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            token = jwt.encode(_claims(ANA), other, algorithm="RS256")
        elif kind == "shared-secret":
            token = make_token(ANA)
        elif kind == "alg-none":
            token = unsigned_token(_claims(ANA))
        else:
            token = jwt.encode(_claims(ANA, ttl=-30), private, algorithm="RS256")
        assert_unauthorized(await refused(server_url, auth={"token": token}))
        await assert_still_serving_rs256(connect, rsa_keys)


async def assert_still_serving_rs256(connect, rsa_keys) -> None:
    private, _ = rsa_keys
    ben = await connect(BEN, token=jwt.encode(_claims(BEN), private, algorithm="RS256"))
    assert (await ben.call("list_groups"))["ok"]


async def test_rs256_token_is_refused_by_a_server_with_a_shared_secret(connect, server_url, rsa_keys):
    private, _ = rsa_keys
    assert_unauthorized(await refused(server_url, auth={"token": jwt.encode(_claims(ANA), private, algorithm="RS256")}))
    await assert_still_serving(connect)
