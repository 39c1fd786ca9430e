"""Presence, typing, read markers, edit and delete, with real clients."""

from __future__ import annotations

import asyncio

from tests.support.chat import ANA, BEN, CAROL, MATHS, PHYSICS
from tests.support.chat import both_stores as backend


async def send(client, content, group=MATHS):
    ack = await client.call("send_message", {"group_id": group, "content": content})
    assert ack["ok"], ack
    return ack["message"]


async def join(client, group=MATHS, **extra):
    ack = await client.call("join_group", {"group_id": group, **extra})
    assert ack["ok"], ack
    return ack


# -- presence --

async def test_presence_counts_users_not_connections(connect):
    ana = await connect(ANA)
    assert (await join(ana))["online"] == [ANA]
    assert ana.events("presence") == []  # no event about itself

    ben_phone, ben_laptop = await connect(BEN), await connect(BEN)
    assert (await join(ben_phone))["online"] == sorted([ANA, BEN])
    online = await ana.wait_event("presence")
    assert online == [{"group_id": MATHS, "user_id": BEN, "name": "Ben Okafor", "online": True}]

    await join(ben_laptop)  # Ben's second device: nobody is told again
    await join(ben_laptop)  # joining the same room again changes nothing
    await ben_phone.sio.disconnect()  # Ben still has the laptop
    await ana.settle()
    assert len(ana.events("presence")) == 1

    await ben_laptop.call("leave_group", {"group_id": MATHS})
    offline = await ana.wait_event("presence", 2)
    assert offline[1] == {"group_id": MATHS, "user_id": BEN, "name": "Ben Okafor", "online": False}
    assert (await join(ana))["online"] == [ANA]


async def test_dropped_connection_counts_as_leaving(connect):
    ana, carol = await connect(ANA), await connect(CAROL)
    await join(ana, PHYSICS)
    await join(carol, PHYSICS)
    await carol.sio.disconnect()
    events = await ana.wait_event("presence", 2)
    assert events[-1]["online"] is False and events[-1]["user_id"] == CAROL


# -- typing --

async def test_typing_reaches_the_room_except_the_typist_and_is_throttled(connect):
    ana, ben, ben2 = await connect(ANA), await connect(BEN), await connect(BEN)
    for c in (ana, ben, ben2):
        await join(c)
    assert await ana.call("typing", {"group_id": MATHS, "is_typing": True}) == {"ok": True}
    assert await ana.call("typing", {"group_id": MATHS, "is_typing": True}) == {"ok": True}  # dropped
    assert await ana.call("typing", {"group_id": MATHS, "is_typing": False}) == {"ok": True}
    expected = [
        {"group_id": MATHS, "user_id": ANA, "name": "Ana García", "is_typing": True},
        {"group_id": MATHS, "user_id": ANA, "name": "Ana García", "is_typing": False},
    ]
    assert await ben.wait_event("typing", 2) == expected
    # Ben's other connection is not the typing one, so it is told too.
    assert await ben2.wait_event("typing", 2) == expected
    await ana.settle()
    assert ana.events("typing") == []
    # After a stop, a new start goes through at once.
    await ana.call("typing", {"group_id": MATHS, "is_typing": True})
    assert (await ben.wait_event("typing", 3))[2]["is_typing"] is True


async def test_typing_is_never_stored(connect):
    ana = await connect(ANA)
    await ana.call("typing", {"group_id": MATHS, "is_typing": True})
    history = await ana.call("get_history", {"group_id": MATHS})
    assert history["messages"] == []


# -- read markers --

async def test_read_markers_and_unread_counts(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    for i in range(3):
        await send(ana, f"a{i}")
    await send(ben, "b0")
    await send(ana, "a3")
    # Ben: 4 of the 5 messages are from others.
    ack = await join(ben)
    assert (ack["last_read_seq"], ack["unread_count"]) == (0, 4)
    groups = (await ben.call("list_groups"))["groups"]
    assert groups[0] == {"id": MATHS, "name": "Maths", "latest_seq": 5, "latest_rev": 5, "unread_count": 4,
                         "mention_count": 0, "open_questions": 0}

    assert await ben.call("mark_read", {"group_id": MATHS, "seq": 3}) == {
        "ok": True, "last_read_seq": 3, "unread_count": 1, "mention_count": 0}
    # Never moves back.
    assert await ben.call("mark_read", {"group_id": MATHS, "seq": 1}) == {
        "ok": True, "last_read_seq": 3, "unread_count": 1, "mention_count": 0}
    # Clamped to the latest seq.
    assert await ben.call("mark_read", {"group_id": MATHS, "seq": 999}) == {
        "ok": True, "last_read_seq": 5, "unread_count": 0, "mention_count": 0}
    # Markers are per user, across connections.
    again = await connect(BEN)
    ack = await join(again)
    assert (ack["last_read_seq"], ack["unread_count"]) == (5, 0)
    assert (await join(ana))["unread_count"] == 1  # Ben's message


async def test_deleted_messages_do_not_count_as_unread(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    first = await send(ana, "oops")
    await send(ana, "kept")
    await ana.call("delete_message", {"group_id": MATHS, "message_id": first["id"]})
    assert (await join(ben))["unread_count"] == 1


# -- edit and delete --

async def test_edit_is_broadcast_and_history_shows_the_current_version(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await join(ben)
    original = await send(ana, "teh answer is 42")
    ack = await ana.call("edit_message", {"group_id": MATHS, "message_id": original["id"], "content": "the answer is 42"})
    assert ack["ok"]
    edited = ack["message"]
    assert edited["content"] == "the answer is 42" and edited["edited_at"] is not None
    assert {k: v for k, v in edited.items() if k not in ("content", "edited_at", "rev")} == {
        k: v for k, v in original.items() if k not in ("content", "edited_at", "rev")}
    assert edited["rev"] == original["rev"] + 1
    assert await ben.wait_event("message_updated") == [edited]
    history = await ben.call("get_history", {"group_id": MATHS})
    assert history["messages"] == [edited]
    catch_up = await ben.call("join_group", {"group_id": MATHS, "since_seq": 0})
    assert catch_up["messages"] == [edited]


async def test_only_the_sender_edits_or_deletes(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    message = await send(ana, "mine")
    for event, extra in (("edit_message", {"content": "hijacked"}), ("delete_message", {})):
        ack = await ben.call(event, {"group_id": MATHS, "message_id": message["id"], **extra})
        assert ack["error"]["code"] == "forbidden"
    history = await ana.call("get_history", {"group_id": MATHS})
    assert history["messages"] == [message]


async def test_delete_leaves_a_tombstone(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await join(ben)
    message = await send(ana, "regrettable")
    await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "still regrettable"})
    ack = await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]})
    tomb = ack["message"]
    assert tomb["deleted"] is True and tomb["content"] == ""
    for key in ("id", "seq", "group_id", "sender_id", "sender", "sender_name", "timestamp", "client_msg_id"):
        assert tomb[key] == message[key]
    assert tomb["edited_at"] is not None
    assert await ben.wait_event("message_deleted") == [tomb]
    # Deleting again returns the tombstone without another broadcast.
    again = await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]})
    assert again == {"ok": True, "message": tomb}
    # A deleted message cannot be edited.
    edit = await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "x"})
    assert edit["error"]["code"] == "message_not_found"
    await ben.settle()
    assert len(ben.events("message_deleted")) == 1
    history = await ben.call("get_history", {"group_id": MATHS})
    assert history["messages"] == [tomb]


async def test_message_of_another_group_is_not_found(connect):
    ana = await connect(ANA)
    message = await send(ana, "physics only", group=PHYSICS)
    for event, extra in (("edit_message", {"content": "x"}), ("delete_message", {})):
        ack = await ana.call(event, {"group_id": MATHS, "message_id": message["id"], **extra})
        assert ack["error"]["code"] == "message_not_found"


async def test_concurrent_deletes_broadcast_once(connect):
    ana, ana2, ben = await connect(ANA), await connect(ANA), await connect(BEN)
    await join(ben)
    message = await send(ana, "going")
    acks = await asyncio.gather(*[
        c.call("delete_message", {"group_id": MATHS, "message_id": message["id"]}) for c in (ana, ana2)])
    assert all(a["ok"] and a["message"]["deleted"] for a in acks)
    await ben.wait_event("message_deleted")
    await ben.settle()
    assert len(ben.events("message_deleted")) == 1


async def test_older_clients_sender_id_is_accepted_on_every_event_when_it_is_the_caller(connect):
    ana = await connect(ANA)
    message = await send(ana, "typo")
    ack = await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "fixed",
                                          "sender_id": ANA})
    assert ack["ok"] and ack["message"]["content"] == "fixed"
    assert (await ana.call("mark_read", {"group_id": MATHS, "seq": 1, "sender_id": ANA.upper()}))["ok"]
    spoof = await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"], "sender_id": BEN})
    assert spoof["error"]["code"] == "forbidden"
    spoof = await ana.call("typing", {"group_id": "65b0000000000000000000ff", "is_typing": True, "sender_id": BEN})
    assert spoof["error"]["code"] == "forbidden"  # before group_not_found
    history = await ana.call("get_history", {"group_id": MATHS})
    assert [m["content"] for m in history["messages"]] == ["fixed"]


async def test_disconnected_clients_leave_no_trace_in_the_room_tables(connect, server):
    """What a connection joined is forgotten when it goes: its own room, the
    group's room and the index of its rooms (mass disconnects use it)."""
    from server.keys import SIO

    manager = server.app[SIO].manager
    ana, ben = await connect(ANA), await connect(BEN)
    await join(ana)
    await join(ben)
    ben_sid = ben.sio.get_sid()
    assert sorted(manager.get_rooms(ben_sid, "/"), key=str) == sorted([ben_sid, MATHS])
    await ben.sio.disconnect()
    await ana.wait_event("presence", 2)  # Ben online, then offline
    rooms = manager.rooms["/"]
    assert all(ben_sid not in members for members in rooms.values())
    assert ben_sid not in rooms
    assert manager.get_rooms(ben_sid, "/") == []
    assert [sid for sid, _ in manager.get_participants("/", MATHS)] == [ana.sio.get_sid()]
