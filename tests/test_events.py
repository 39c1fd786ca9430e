"""The core events over a real server with real python-socketio clients."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.chat import ANA, BEN, CAROL, DAN, EVE, MATHS, MESSAGE_FIELDS, NOWHERE, PHYSICS, make_token
from tests.support.chat import both_stores as backend


async def send(client, content, group=MATHS, **extra):
    ack = await client.call("send_message", {"group_id": group, "content": content, **extra})
    assert ack["ok"], ack
    return ack["message"]


async def test_list_groups_returns_the_callers_groups_by_name(connect):
    ana = await connect(ANA)
    ack = await ana.call("list_groups")
    assert ack == {
        "ok": True,
        "groups": [
            {"id": MATHS, "name": "Maths", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
            {"id": PHYSICS, "name": "Physics", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
        ],
    }
    assert await ana.call("list_groups", {}) == ack
    dan = await connect(DAN)
    assert await dan.call("list_groups") == {"ok": True, "groups": []}


async def test_send_is_acked_and_broadcast_to_the_room_sender_included(connect):
    ana, ben, carol = await connect(ANA), await connect(BEN), await connect(CAROL)
    for c in (ana, ben):
        assert (await c.call("join_group", {"group_id": MATHS}))["ok"]
    ack = await ana.call("send_message", {"group_id": MATHS, "content": "Hola a todos!", "client_msg_id": "c-1"})
    assert ack["ok"] is True and ack["duplicate"] is False
    message = ack["message"]
    assert set(message) == MESSAGE_FIELDS
    assert message["type"] == "message"
    assert message["seq"] == 1
    assert message["group_id"] == MATHS
    assert message["sender_id"] == ANA
    assert message["sender"] == message["sender_name"] == "Ana García"
    assert message["content"] == "Hola a todos!"
    assert message["client_msg_id"] == "c-1"
    assert message["edited_at"] is None and message["deleted"] is False
    assert len(message["timestamp"]) == 24 and message["timestamp"].endswith("Z")
    for c in (ana, ben):
        assert (await c.wait_event("message")) == [message]
    await carol.settle()
    assert carol.events("message") == []  # a member who did not join the room


async def test_seq_is_contiguous_per_group_under_concurrent_sends(connect):
    ana, carol = await connect(ANA), await connect(CAROL)
    await carol.call("join_group", {"group_id": MATHS})
    acks = await asyncio.gather(
        *[c.call("send_message", {"group_id": MATHS, "content": f"m{i}"})
          for i in range(40) for c in (ana, carol)]
    )
    seqs = sorted(a["message"]["seq"] for a in acks)
    assert seqs == list(range(1, 81))
    received = await carol.wait_event("message", 80)
    assert [m["seq"] for m in received] == list(range(1, 81))  # in order, once each
    physics = await send(ana, "other group", group=PHYSICS)
    assert physics["seq"] == 1


async def test_same_client_msg_id_returns_the_first_message_and_broadcasts_nothing(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    first = await ana.call("send_message", {"group_id": MATHS, "content": "once", "client_msg_id": "k"})
    again = await ana.call("send_message", {"group_id": MATHS, "content": "different", "client_msg_id": "k"})
    assert again == {"ok": True, "message": first["message"], "duplicate": True}
    # The same id from another sender is another message.
    other = await ben.call("send_message", {"group_id": MATHS, "content": "mine", "client_msg_id": "k"})
    assert other["duplicate"] is False and other["message"]["seq"] == 2
    await ben.wait_event("message", 2)
    await ben.settle()
    assert [m["seq"] for m in ben.events("message")] == [1, 2]


async def test_join_returns_latest_page_and_since_seq_catch_up(connect):
    ana = await connect(ANA)
    for i in range(1, 8):
        await send(ana, f"m{i}")
    ben = await connect(BEN)
    ack = await ben.call("join_group", {"group_id": MATHS.upper(), "limit": 3})
    assert ack["ok"] and ack["group"] == {"id": MATHS, "name": "Maths"}
    assert [m["seq"] for m in ack["messages"]] == [5, 6, 7]
    assert ack["has_more"] is True and ack["latest_seq"] == 7
    assert ack["last_read_seq"] == 0 and ack["unread_count"] == 7
    assert ack["online"] == [BEN]

    catch_up = await ben.call("join_group", {"group_id": MATHS, "since_seq": 2, "limit": 3})
    assert [m["seq"] for m in catch_up["messages"]] == [3, 4, 5]
    assert catch_up["has_more"] is True
    rest = await ben.call("get_history", {"group_id": MATHS, "after_seq": 5, "limit": 3})
    assert [m["seq"] for m in rest["messages"]] == [6, 7] and rest["has_more"] is False
    tail = await ben.call("join_group", {"group_id": MATHS, "since_seq": 7})
    assert tail["messages"] == [] and tail["has_more"] is False and tail["latest_seq"] == 7


async def test_history_pages_in_both_directions(connect):
    ana = await connect(ANA)
    for i in range(1, 11):
        await send(ana, f"m{i}")

    async def page(**q):
        ack = await ana.call("get_history", {"group_id": MATHS, **q})
        assert ack["ok"], ack
        return [m["seq"] for m in ack["messages"]], ack["has_more"]

    assert await page(limit=4) == ([7, 8, 9, 10], True)
    assert await page(before_seq=7, limit=4) == ([3, 4, 5, 6], True)
    assert await page(before_seq=3, limit=4) == ([1, 2], False)
    assert await page(before_seq=5, limit=4) == ([1, 2, 3, 4], False)
    assert await page(after_seq=0, limit=4) == ([1, 2, 3, 4], True)
    assert await page(after_seq=6, limit=4) == ([7, 8, 9, 10], False)
    assert await page(after_seq=10) == ([], False)
    assert await page() == (list(range(1, 11)), False)
    assert await page(limit=10) == (list(range(1, 11)), False)
    assert await page(before_seq=99, limit=2) == ([9, 10], True)


async def test_empty_group(connect):
    ana = await connect(ANA)
    ack = await ana.call("join_group", {"group_id": PHYSICS})
    assert ack["messages"] == [] and ack["has_more"] is False and ack["latest_seq"] == 0
    assert await ana.call("get_history", {"group_id": PHYSICS}) == {"ok": True, "messages": [], "has_more": False}


async def test_leave_group_stops_broadcasts(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    await send(ana, "one")
    await ben.wait_event("message")
    assert await ben.call("leave_group", {"group_id": MATHS}) == {"ok": True}
    assert await ben.call("leave_group", {"group_id": MATHS}) == {"ok": True}  # leaving twice is fine
    await send(ana, "two")
    await ben.settle()
    assert [m["content"] for m in ben.events("message")] == ["one"]
    ack = await ben.call("leave_group", {"group_id": NOWHERE})
    assert ack["error"]["code"] == "group_not_found"


async def test_non_members_learn_nothing(connect):
    ana = await connect(ANA)
    await send(ana, "secret plans")
    dan = await connect(DAN)
    for event, payload in [
        ("join_group", {"group_id": MATHS}),
        ("get_history", {"group_id": MATHS}),
        ("send_message", {"group_id": MATHS, "content": "let me in"}),
        ("typing", {"group_id": MATHS, "is_typing": True}),
        ("mark_read", {"group_id": MATHS, "seq": 1}),
    ]:
        ack = await dan.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", (event, ack)
        assert set(ack) == {"ok", "error"}
        assert "secret" not in str(ack)
    ack = await dan.call("join_group", {"group_id": NOWHERE})
    assert ack["error"]["code"] == "group_not_found"
    history = await ana.call("get_history", {"group_id": MATHS})
    assert [m["content"] for m in history["messages"]] == ["secret plans"]


async def test_user_without_users_document_has_id_as_name(connect):
    eve = await connect(EVE)
    assert await eve.call("list_groups") == {"ok": True, "groups": []}
    ack = await eve.call("join_group", {"group_id": MATHS})
    assert ack["error"]["code"] == "not_member"


async def test_sender_id_must_be_the_caller(connect):
    ana = await connect(ANA)
    ok = await ana.call("send_message", {"group_id": MATHS, "content": "me", "sender_id": ANA.upper()})
    assert ok["ok"] and ok["message"]["sender_id"] == ANA
    spoof = await ana.call("send_message", {"group_id": MATHS, "content": "not me", "sender_id": BEN})
    assert spoof["error"]["code"] == "forbidden"
    # forbidden (spoofed sender) comes before group_not_found and not_member
    spoof = await ana.call("send_message", {"group_id": NOWHERE, "content": "x", "sender_id": BEN})
    assert spoof["error"]["code"] == "forbidden"
    history = await ana.call("get_history", {"group_id": MATHS})
    assert [m["content"] for m in history["messages"]] == ["me"]


async def test_error_order_invalid_payload_before_membership(connect):
    dan = await connect(DAN)
    ack = await dan.call("send_message", {"group_id": NOWHERE, "content": ""})
    assert ack["error"]["code"] == "invalid_payload"
    ack = await dan.call("send_message", {"group_id": NOWHERE, "content": "x"})
    assert ack["error"]["code"] == "group_not_found"
    ack = await dan.call("send_message", {"group_id": MATHS, "content": "x"})
    assert ack["error"]["code"] == "not_member"


async def test_unknown_event_with_ack_is_invalid_payload_and_without_is_ignored(connect):
    ana = await connect(ANA)
    ack = await ana.call("fly_to_the_moon", {"x": 1})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"
    await ana.call("join_group", {"group_id": MATHS})
    await ana.sio.emit("fly_to_the_moon", {"x": 1})
    await ana.sio.emit("send_message", {"group_id": MATHS, "content": "no ack wanted"})
    await ana.wait_event("message")  # handled all the same
    ack = await ana.call("get_history", {"group_id": MATHS})
    assert [m["content"] for m in ack["messages"]] == ["no ack wanted"]
    assert ana.sio.connected


async def test_reserved_event_names_from_a_client_change_nothing(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    ack = await ben.call("disconnect", {"x": 1})
    assert ack["ok"] is False
    await send(ana, "still here?")
    assert (await ben.wait_event("message"))[0]["content"] == "still here?"


async def test_no_event_payload_or_several_arguments(connect):
    ana = await connect(ANA)
    ack = await ana.call("join_group")
    assert ack["error"]["code"] == "invalid_payload"
    ack = await ana.call("join_group", {"group_id": MATHS}, {"group_id": MATHS})
    assert ack["error"]["code"] == "invalid_payload"
    ack = await ana.call("send_message", "hello")
    assert ack["error"]["code"] == "invalid_payload"
    assert ack["error"]["details"]


async def test_http_history_matches_the_event(connect, server_url):
    ana = await connect(ANA)
    for i in range(3):
        await send(ana, f"m{i}")
    via_event = await ana.call("get_history", {"group_id": MATHS, "limit": 2})
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{server_url}/study-groups/{MATHS}/messages?limit=2",
                              headers={"Authorization": f"Bearer {make_token(ANA)}"})
        assert resp.status == 200
        assert await resp.json() == via_event
