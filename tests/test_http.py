"""The HTTP routes: history and groups for REST clients, health, the page, demo sign-in, CORS."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import socketio

from server.app import create_app
from server.config import Settings
from server.demo import GROUPS as DEMO_GROUPS
from server.demo import USERS as DEMO_USERS
from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    EVE,
    MATHS,
    NOWHERE,
    PHYSICS,
    make_settings,
    make_token,
)

MAX_SAFE = 2**53 - 1
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(user_id: str = ANA, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user_id, **kwargs)}"}


async def assert_error(resp: aiohttp.ClientResponse, status: int, code: str, field: str | None = None) -> dict:
    """The one error envelope, with the status code that matches its code."""
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"ok", "error"} and body["ok"] is False, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    assert set(error) <= {"code", "message", "details", "retry_after_ms"}, body
    if code == "invalid_payload":
        details = error["details"]
        assert isinstance(details, dict) and details, body
        assert all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in details.values()), body
        if field is not None:
            assert field in details, body
    return body


async def seed(connect, count: int, group: str = MATHS) -> list[dict[str, Any]]:
    ana = await connect(ANA)
    messages = []
    for i in range(1, count + 1):
        ack = await ana.call("send_message", {"group_id": group, "content": f"m{i}"})
        assert ack["ok"], ack
        messages.append(ack["message"])
    return messages


# -- GET /study-groups --

async def test_groups_lists_the_callers_groups(http, server_url):
    resp = await http.get(f"{server_url}/study-groups", headers=bearer(ANA))
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == {
        "ok": True,
        "groups": [
            {"id": MATHS, "name": "Maths", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
            {"id": PHYSICS, "name": "Physics", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
        ],
    }
    for user in (DAN, EVE):
        resp = await http.get(f"{server_url}/study-groups", headers=bearer(user))
        assert resp.status == 200 and await resp.json() == {"ok": True, "groups": []}


async def test_groups_match_list_groups_after_messages(http, server_url, connect):
    await seed(connect, 3)
    ben = await connect(BEN)
    resp = await http.get(f"{server_url}/study-groups", headers=bearer(BEN))
    assert await resp.json() == await ben.call("list_groups")
    assert (await resp.json())["groups"][0]["unread_count"] == 3


@pytest.mark.parametrize("path", ["/study-groups", f"/study-groups/{MATHS}/messages"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Basic {make_token(ANA)}"},
        {"Authorization": f"Bearer {make_token(ANA, secret=OTHER_SECRET)}"},
        {"Authorization": f"Bearer {make_token(ANA, ttl=-30)}"},
        {"Authorization": f"Bearer {make_token(ANA, exp=None)}"},
        {"Authorization": f"Bearer {make_token('not-an-id')}"},
    ],
    ids=["none", "empty-bearer", "garbage", "basic", "other-secret", "expired", "no-exp", "bad-sub"],
)
async def test_routes_need_a_valid_bearer_token(http, server_url, path, headers):
    await assert_error(await http.get(server_url + path, headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("path", ["/study-groups", f"/study-groups/{MATHS}/messages"])
async def test_a_token_in_the_query_string_is_not_read(http, server_url, path):
    token = make_token(ANA)
    for name in ("token", "access_token"):
        await assert_error(await http.get(f"{server_url}{path}?{name}={token}"), 401, "unauthorized")


# -- GET /study-groups/{group_id}/messages --

async def test_history_pages_like_get_history(http, server_url, connect):
    sent = await seed(connect, 10)
    ana = await connect(ANA)

    async def page(query: str) -> tuple[list[int], bool]:
        resp = await http.get(f"{server_url}/study-groups/{MATHS}/messages{query}", headers=bearer(ANA))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"ok", "messages", "has_more"} and body["ok"] is True
        assert isinstance(body["has_more"], bool)
        return [m["seq"] for m in body["messages"]], body["has_more"]

    assert await page("") == (list(range(1, 11)), False)
    assert await page("?limit=4") == ([7, 8, 9, 10], True)
    assert await page("?before_seq=7&limit=4") == ([3, 4, 5, 6], True)
    assert await page("?before_seq=3&limit=4") == ([1, 2], False)
    assert await page("?after_seq=0&limit=4") == ([1, 2, 3, 4], True)
    assert await page("?after_seq=6&limit=4") == ([7, 8, 9, 10], False)
    assert await page("?limit=1") == ([10], True)
    assert await page("?limit=100") == (list(range(1, 11)), False)
    assert await page(f"?after_seq={MAX_SAFE}") == ([], False)
    assert await page(f"?before_seq={MAX_SAFE}&limit=2") == ([9, 10], True)
    assert await page("?before_seq=1") == ([], False)
    # unknown parameters are ignored
    assert await page("?limit=2&foo=bar&sender=x&limit_x=0") == ([9, 10], True)

    resp = await http.get(f"{server_url}/study-groups/{MATHS}/messages?after_seq=2&limit=3", headers=bearer(ANA))
    assert await resp.json() == await ana.call("get_history", {"group_id": MATHS, "after_seq": 2, "limit": 3})
    assert (await resp.json())["messages"] == sent[2:5]


async def test_history_with_an_upper_case_group_id_answers_lower_case(http, server_url, connect):
    await seed(connect, 1)
    resp = await http.get(f"{server_url}/study-groups/{MATHS.upper()}/messages", headers=bearer(CAROL))
    assert resp.status == 200
    (message,) = (await resp.json())["messages"]
    assert message["group_id"] == MATHS and message["sender_id"] == ANA


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=", "limit"),
        ("before_seq=", "before_seq"),
        ("after_seq=", "after_seq"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=true", "limit"),
        ("limit=1e2", "limit"),
        ("before_seq=0", "before_seq"),
        ("before_seq=-1", "before_seq"),
        (f"before_seq={2**53}", "before_seq"),
        ("after_seq=-1", "after_seq"),
        (f"after_seq={2**53}", "after_seq"),
        ("after_seq=99999999999999999999999", "after_seq"),
        ("after_seq=x1", "after_seq"),
        ("before_seq=5&after_seq=1", None),
    ],
)
async def test_history_query_follows_get_history_rules(http, server_url, connect, query, field):
    await seed(connect, 2)
    resp = await http.get(f"{server_url}/study-groups/{MATHS}/messages?{query}", headers=bearer(ANA))
    body = await assert_error(resp, 400, "invalid_payload", field)
    if field is None:
        assert {"before_seq", "after_seq"} & set(body["error"]["details"]), body


@pytest.mark.parametrize("group", ["xyz", MATHS[:23], MATHS + "0", MATHS[:23] + "g"])
async def test_history_of_a_malformed_group_id_is_400(http, server_url, group):
    await assert_error(
        await http.get(f"{server_url}/study-groups/{group}/messages", headers=bearer(DAN)),
        400, "invalid_payload", "group_id",
    )


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/study-groups/xyz/messages?limit=0", {}, 401, "unauthorized"),  # 401 before 400
        (f"/study-groups/{NOWHERE}/messages", {}, 401, "unauthorized"),
        (f"/study-groups/{MATHS}/messages?limit=0", {}, 401, "unauthorized"),
        (f"/study-groups/{NOWHERE}/messages?limit=0", bearer(DAN), 400, "invalid_payload"),  # 400 before 404
        (f"/study-groups/{MATHS}/messages?limit=abc", bearer(DAN), 400, "invalid_payload"),  # 400 before 403
        (f"/study-groups/{NOWHERE}/messages", bearer(DAN), 404, "group_not_found"),  # 404 before 403
        (f"/study-groups/{NOWHERE}/messages", bearer(ANA), 404, "group_not_found"),
        (f"/study-groups/{MATHS}/messages", bearer(DAN), 403, "not_member"),
        (f"/study-groups/{PHYSICS}/messages?limit=5", bearer(BEN), 403, "not_member"),
        (f"/study-groups/{MATHS}/messages", bearer(EVE), 403, "not_member"),
    ],
)
async def test_history_errors_come_in_the_documented_order(http, server_url, connect, path, headers, status, code):
    await seed(connect, 1, MATHS)
    await seed(connect, 1, PHYSICS)
    resp = await http.get(server_url + path, headers=headers)
    await assert_error(resp, status, code)
    assert "m1" not in await resp.text()  # refusals carry no messages


# -- health, readiness, the page, metrics --

async def test_healthz_and_readyz(http, server_url):
    resp = await http.get(f"{server_url}/healthz")
    assert resp.status == 200
    resp = await http.get(f"{server_url}/readyz")
    assert resp.status == 200


async def test_root_serves_the_test_page(http, server_url):
    resp = await http.get(f"{server_url}/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "<html" in (await resp.text()).lower()


async def test_metrics_are_prometheus_text(http, server_url, connect):
    await seed(connect, 1)
    resp = await http.get(f"{server_url}/metrics")
    assert resp.status == 200, resp.status
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "# TYPE " in text and "# HELP " in text


# -- demo sign-in --

@pytest.mark.parametrize(("method", "path"), [("GET", "/demo/users"), ("POST", "/demo/token")])
async def test_demo_routes_do_not_exist_without_demo_mode(http, server_url, method, path):
    resp = await http.request(method, server_url + path, json={"user_id": ANA})
    assert resp.status == 404
    assert "token" not in (await resp.text()).lower()


@pytest.fixture
async def demo_url(aiohttp_server) -> str:
    app = create_app(Settings.from_env({}, demo=True))  # no storage: the demo data is seeded
    demo = await aiohttp_server(app)
    return str(demo.make_url("")).rstrip("/")


async def test_demo_users_and_tokens_sign_in(http, demo_url, connect):
    resp = await http.get(f"{demo_url}/demo/users")
    assert resp.status == 200
    body = await resp.json()
    assert body["ok"] is True and set(body) == {"ok", "users"}
    names = {u["id"]: u["name"] for u in body["users"]}
    assert all(set(u) == {"id", "name"} for u in body["users"])
    assert names == {uid: f"{first} {last}" for uid, first, last in DEMO_USERS}

    calculus = DEMO_GROUPS[0][0]
    for user_id, *_ in DEMO_USERS[:2]:
        resp = await http.post(f"{demo_url}/demo/token", json={"user_id": user_id})
        assert resp.status == 200
        token_body = await resp.json()
        assert set(token_body) == {"ok", "token"} and token_body["ok"] is True
        client = await connect(None, token=token_body["token"], url=demo_url)
        groups = await client.call("list_groups")
        assert calculus in [g["id"] for g in groups["groups"]]
        ack = await client.call("send_message", {"group_id": calculus, "content": "hello from the demo"})
        assert ack["ok"], ack
        assert ack["message"]["sender_id"] == user_id
        assert ack["message"]["sender"] == ack["message"]["sender_name"] == names[user_id]


async def test_demo_token_works_for_http_routes_too(http, demo_url):
    resp = await http.post(f"{demo_url}/demo/token", json={"user_id": DEMO_USERS[0][0]})
    token = (await resp.json())["token"]
    resp = await http.get(f"{demo_url}/study-groups", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and (await resp.json())["ok"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"json": {"user_id": ANA}},  # a valid id, but not a demo user
        {"json": {"user_id": "64b00000000000000000000"}},  # 23 chars
        {"json": {"user_id": "not-an-id"}},
        {"json": {"user_id": 5}},
        {"json": {"user_id": None}},
        {"json": {}},
        {"json": ["64b000000000000000000001"]},
        {"data": "not json at all", "headers": {"Content-Type": "application/json"}},
        {"data": "user_id=64b000000000000000000001",
         "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {},
    ],
    ids=["unknown-id", "short-id", "malformed-id", "number", "null", "empty-object", "list", "not-json",
         "form-encoded", "no-body"],
)
async def test_demo_token_refuses_bad_requests(http, demo_url, body):
    resp = await http.post(f"{demo_url}/demo/token", **body)
    await assert_error(resp, 400, "invalid_payload")


# -- CORS --

APP_ORIGIN = "https://app.example"


class TestCors:
    @pytest.fixture
    def settings(self):
        return make_settings(cors_origins=(APP_ORIGIN,))

    @pytest.mark.parametrize("path", ["/study-groups", f"/study-groups/{MATHS}/messages", "/healthz"])
    async def test_configured_origin_is_allowed_on_http_routes(self, http, server_url, path):
        resp = await http.get(server_url + path, headers={**bearer(ANA), "Origin": APP_ORIGIN})
        assert resp.status == 200
        assert resp.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN

    async def test_configured_origin_sees_cors_headers_on_errors_too(self, http, server_url):
        resp = await http.get(f"{server_url}/study-groups", headers={"Origin": APP_ORIGIN})
        assert resp.status == 401
        assert resp.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN

    async def test_preflight_from_configured_origin_allows_the_bearer_header(self, http, server_url):
        resp = await http.options(
            f"{server_url}/study-groups",
            headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"},
        )
        assert 200 <= resp.status < 300
        assert resp.headers.get("Access-Control-Allow-Origin") == APP_ORIGIN
        assert "authorization" in resp.headers.get("Access-Control-Allow-Headers", "").lower()

    @pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil.example",
                                        "http://app.example", "null"])
    async def test_other_origins_get_no_cors_headers(self, http, server_url, origin):
        resp = await http.get(f"{server_url}/study-groups", headers={**bearer(ANA), "Origin": origin})
        assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await http.options(
            f"{server_url}/study-groups",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"},
        )
        assert "Access-Control-Allow-Origin" not in resp.headers

    async def test_socketio_handshake_from_configured_and_own_origin_is_accepted(self, connect, server_url):
        for origin in (APP_ORIGIN, server_url):
            client = await connect(ANA, headers={"Origin": origin})
            assert (await client.call("list_groups"))["ok"]

    @pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example"])
    async def test_socketio_handshake_from_another_origin_is_refused(self, connect, server_url, origin):
        sio = socketio.AsyncClient(reconnection=False)
        try:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await sio.connect(server_url, auth={"token": make_token(ANA)}, headers={"Origin": origin},
                                  transports=["websocket"], wait_timeout=10)
            assert not sio.connected
        finally:
            if sio.connected:
                await sio.disconnect()
            # python-engineio's client keeps its HTTP session open after a failed
            # websocket handshake; close it so no socket leaks into later tests.
            if sio.eio.http is not None and not sio.eio.http.closed:
                await sio.eio.http.close()
        client = await connect(ANA, headers={"Origin": APP_ORIGIN})  # still serving
        assert (await client.call("list_groups"))["ok"]

    async def test_polling_handshake_answers_cors_for_allowed_origins_only(self, http, server_url):
        url = f"{server_url}/socket.io/?EIO=4&transport=polling"

        async def handshake(origin: str) -> tuple[int, str | None]:
            resp = await http.get(url, headers={"Origin": origin})
            status, allow = resp.status, resp.headers.get("Access-Control-Allow-Origin")
            if status == 200:
                # Close the Engine.IO session as a leaving client does (an
                # abandoned polling session holds up the server's shutdown).
                sid = json.loads((await resp.text())[1:])["sid"]
                closed = await http.post(f"{url}&sid={sid}", data="1", headers={"Origin": origin})
                assert closed.status == 200
            return status, allow

        assert await handshake(APP_ORIGIN) == (200, APP_ORIGIN)
        status, allow = await handshake("https://evil.example")
        assert status >= 400 and allow is None
