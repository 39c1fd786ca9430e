"""The platform's own calls with service tokens (``role: "service"``), as the platform
and the members notice them: system messages stored, broadcast once, idempotent and
in ``seq`` order with live sends on both stores; user tokens refused; service tokens
open no Socket.IO connection and read no user route."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from handlers.auth import TokenConfig, TokenVerifier
from handlers.errors import ChatError
from tests.support.chat import ANA, BEN, DAN, MATHS, NOWHERE, PHYSICS, SECRET, make_token, refused
from tests.support.chat import both_stores as backend

PLATFORM = "course-platform"


def service_headers(name: str = PLATFORM, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(name, role='service', **claims)}"}


async def post(server_url: str, group_id: str, body: Any, headers: dict[str, str] | None = None,
               path: str = "messages") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, (str, bytes)) else {"json": body}
        resp = await http.post(f"{server_url}/study-groups/{group_id}/{path}",
                               headers=service_headers() if headers is None else headers, **kwargs)
        assert resp.content_type == "application/json", resp.status
        return resp.status, await resp.json()


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    assert status == expected_status, (status, body)
    assert set(body) == {"ok", "error"} and body["ok"] is False, body
    assert body["error"]["code"] == code and body["error"]["message"], body


async def test_a_system_message_is_stored_and_broadcast(connect, server_url):
    ana, ben = await connect(ANA), await connect(BEN)
    for client in (ana, ben):
        await client.call("join_group", {"group_id": MATHS})
    status, body = await post(server_url, MATHS, {"content": "Exam moved to Friday", "client_msg_id": "exam-1"})
    assert status == 200 and body["ok"] is True and body["duplicate"] is False, body
    message = body["message"]
    assert (message["kind"], message["sender_id"], message["sender_name"], message["sender"]) == \
        ("system", None, PLATFORM, PLATFORM)
    assert (message["seq"], message["rev"], message["group_id"], message["client_msg_id"]) == (1, 1, MATHS, "exam-1")
    for client in (ana, ben):
        assert (await client.wait_event("message"))[0] == message
    history = await ana.call("get_history", {"group_id": MATHS})
    assert history["messages"] == [message]
    # Members' own messages are of kind "message"; the system message counts as unread.
    sent = await ana.call("send_message", {"group_id": MATHS, "content": "ok!"})
    assert sent["message"]["kind"] == "message"
    assert (await ben.call("mark_read", {"group_id": MATHS, "seq": 0}))["unread_count"] == 2
    # Nobody can edit or delete it.
    for event in ("edit_message", "delete_message"):
        ack = await ana.call(event, {"group_id": MATHS, "message_id": message["id"], "content": "x"}
                             if event == "edit_message" else {"group_id": MATHS, "message_id": message["id"]})
        assert ack["error"]["code"] == "forbidden", ack


async def test_the_same_client_msg_id_gives_the_first_message_back(connect, server_url):
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    first = await post(server_url, MATHS, {"content": "Reminder", "client_msg_id": "r-1"})
    again = await post(server_url, MATHS, {"content": "Reminder (sent twice)", "client_msg_id": "r-1"})
    assert again[0] == 200 and again[1]["duplicate"] is True
    assert again[1]["message"] == first[1]["message"]
    await ben.settle()
    assert ben.events("message") == [first[1]["message"]]
    history = await ben.call("get_history", {"group_id": MATHS})
    assert [m["content"] for m in history["messages"]] == ["Reminder"]
    # Another service's key space is the same group's: a reused id is refused, never answered
    # with someone else's message.
    status, body = await post(server_url, MATHS, {"content": "x", "client_msg_id": "r-1"},
                              headers=service_headers("grading"))
    assert_error(status, body, 400, "invalid_payload")
    assert "client_msg_id" in body["error"]["details"]
    # Without a client_msg_id every call is a new message.
    for _ in range(2):
        assert (await post(server_url, MATHS, {"content": "tick"}))[1]["duplicate"] is False
    assert (await ben.call("get_history", {"group_id": MATHS}))["messages"][-1]["seq"] == 3


async def test_system_messages_keep_seq_order_with_live_sends(connect, server_url):
    ana, watcher = await connect(ANA), await connect(BEN)
    await watcher.call("join_group", {"group_id": MATHS})
    count = 25

    async def live() -> list[Any]:
        return await asyncio.gather(*[
            ana.call("send_message", {"group_id": MATHS, "content": f"live {i}", "client_msg_id": f"l-{i}"})
            for i in range(count)])

    async def system() -> list[Any]:
        async with aiohttp.ClientSession() as http:
            async def one(i: int) -> Any:
                resp = await http.post(f"{server_url}/study-groups/{MATHS}/messages", headers=service_headers(),
                                       json={"content": f"system {i}", "client_msg_id": f"s-{i}"})
                return await resp.json()
            return await asyncio.gather(*[one(i) for i in range(count)])

    acks = [a for batch in await asyncio.gather(live(), system()) for a in batch]
    assert all(a["ok"] for a in acks), [a for a in acks if not a["ok"]]
    assert sorted(a["message"]["seq"] for a in acks) == list(range(1, 2 * count + 1))
    received = await watcher.wait_event("message", 2 * count)
    assert [m["seq"] for m in received] == list(range(1, 2 * count + 1))
    assert [m["rev"] for m in received] == list(range(1, 2 * count + 1))
    assert sum(m["kind"] == "system" for m in received) == count


async def test_user_tokens_are_forbidden_on_the_service_routes(server_url, connect):
    ben = await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    member = {"Authorization": f"Bearer {make_token(ANA)}"}
    for path in ("messages", "membership-changed"):
        for group in (MATHS, NOWHERE):  # 403 before anything about the group is read
            status, body = await post(server_url, group, {"content": "hi"}, headers=member, path=path)
            assert_error(status, body, 403, "forbidden")
        # Tokens that are not valid at all: 401.
        for headers in ({}, {"Authorization": f"Bearer {make_token(PLATFORM, role='service', ttl=-60)}"},
                        {"Authorization": "Bearer " + make_token(PLATFORM, role="service", secret="x" * 40)}):
            status, body = await post(server_url, MATHS, {"content": "hi"}, headers=headers, path=path)
            assert_error(status, body, 401, "unauthorized")
    await ben.settle()
    assert ben.events("message") == [] and ben.events("membership_revoked") == []


async def test_bad_requests_are_answered_400_and_unknown_groups_404(server_url):
    cases: list[tuple[Any, str]] = [
        ({"content": "   "}, "content"),
        ({}, "content"),
        ({"content": "x" * 4001}, "content"),
        ({"content": "hi", "sender_id": ANA}, "sender_id"),
        ({"content": "hi", "group_id": MATHS}, "group_id"),
        ({"content": "hi", "client_msg_id": ""}, "client_msg_id"),
        ({"content": "hi", "mentions": "ana"}, "mentions"),
        ({"content": "hi", "mentions": [ANA, ANA]}, "mentions"),
        ({"content": "hi", "mentions": [DAN]}, "mentions"),  # not a member of Maths
        (["hi"], "_payload"),
        ("{not json", "_payload"),
    ]
    for body, field in cases:
        status, answer = await post(server_url, MATHS, body)
        assert_error(status, answer, 400, "invalid_payload")
        assert field in answer["error"]["details"], (body, answer)
    status, answer = await post(server_url, "not-an-id", {"content": "hi"})
    assert_error(status, answer, 400, "invalid_payload")
    status, answer = await post(server_url, NOWHERE, {"content": "hi"})
    assert_error(status, answer, 404, "group_not_found")
    # Members may be mentioned (either case of their ids).
    status, answer = await post(server_url, PHYSICS, {"content": "hi", "mentions": [ANA.upper()]})
    assert status == 200 and answer["ok"], answer


async def test_service_tokens_open_no_connection_and_read_no_user_route(server_url):
    for name in (PLATFORM, ANA):  # a service named like a user id is still a service
        token = make_token(name, role="service")
        for how in ({"auth": {"token": token}}, {"headers": {"Authorization": f"Bearer {token}"}}):
            error = await refused(server_url, **how)
            data = error["data"] if isinstance(error, dict) and "data" in error else error
            assert data["code"] == "unauthorized", data
        async with aiohttp.ClientSession() as http:
            for path in ("/study-groups", f"/study-groups/{MATHS}/messages"):
                resp = await http.get(server_url + path, headers={"Authorization": f"Bearer {token}"})
                assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("token", [
    "", None, 42, "not.a.jwt", "\ud800", make_token(PLATFORM, role="service", secret="y" * 40),
    make_token(PLATFORM, role="service", ttl=-5), make_token("", role="service"),
    make_token("x" * 65, role="service"), make_token("a\nb", role="service"),
])
def test_verify_service_refuses_what_is_not_a_service_token(token):
    verifier = TokenVerifier(TokenConfig(SECRET))
    with pytest.raises(ChatError) as refusal:
        verifier.verify_service(token)
    assert refusal.value.code == "unauthorized"


def test_verify_service_names_the_service_and_tells_users_apart():
    verifier = TokenVerifier(TokenConfig(SECRET))
    assert verifier.verify_service(make_token(PLATFORM, role="service")) == PLATFORM
    for token in (make_token(ANA), make_token(ANA, role="student")):
        with pytest.raises(ChatError) as refusal:
            verifier.verify_service(token)
        assert refusal.value.code == "forbidden"
    assert verifier.verify(make_token(ANA, role="student")) == ANA
    with pytest.raises(ChatError) as refusal:
        verifier.verify(make_token(ANA, role="service"))
    assert refusal.value.code == "unauthorized"

