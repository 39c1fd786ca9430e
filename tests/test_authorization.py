"""Every event and HTTP route, tried by everyone who must be refused: none reads or writes anything.

One table: each identity below against each of the client events and the
HTTP routes under ``/study-groups`` (the platform's service routes included:
a user's token is ``forbidden`` there, whoever the user is). The scene is set first: Ana has written a secret word in three
Maths messages and one message in her own group, Ben is in the Maths room as
the observer and has read up to seq 1. After each refused attempt the stored
history is exactly Ana's messages, nobody's read marker or unread count moved,
no ack or HTTP body carried the secret, and neither Ben nor Ana (in both rooms)
received anything.

Identities:
- ``non-member``: Dan, signed in, in no group; aims at Maths.
- ``no-users-document``: Eve, a valid token whose user has no ``users`` document
  and is in no group; aims at Maths.
- ``member-elsewhere``: Carol, a member of Maths and Physics; aims at Ana's own group.
- ``forged-signature`` / ``expired-token``: tokens naming Ana, signed with another key /
  expired. The handshake is refused with ``unauthorized``, events sent on the
  refused connection are not handled, and the HTTP routes answer 401.
- ``service-token``: a valid token of the platform's (``role: "service"``). It opens
  no Socket.IO connection (``unauthorized``) and reads no user route (401); the
  service routes are its own, so it is not tried there.
- ``sender-id-spoofing``: Carol sending ``sender_id`` = Ana (or, over HTTP,
  ``sender_id``/``user_id`` query parameters and an ``X-User-Id`` header) where
  being Ana would let her read or change something.

``sender_id`` is a field of ``send_message`` only; there a foreign one is
``forbidden``. ``refresh_token`` is tried with a valid token of Ana's: a token for
another user than the connection's is ``forbidden``. The protocol also says any payload carrying a foreign
``sender_id`` is ``forbidden``, while its field table makes ``sender_id`` an
unknown (``invalid_payload``) field of every other event, and ``invalid_payload``
comes first. Both readings refuse, so for those events either code passes; what
is strict is that nothing is read, written or broadcast.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    EVE,
    MATHS,
    PHYSICS,
    ChatClient,
    make_token,
    refused,
    seeded_store,
)

SECRET = "pineapple-protocol"
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"
NOTES = "65b0000000000000000000a3"  # "Ana's notes": Ana only
NO_LEAK = {"ok", "error"}

IDENTITIES = [
    "non-member", "no-users-document", "member-elsewhere",
    "forged-signature", "expired-token", "service-token", "sender-id-spoofing",
]
EVENTS = [
    "list_groups", "join_group", "leave_group", "send_message", "get_history",
    "typing", "mark_read", "edit_message", "delete_message", "get_changes", "refresh_token",
    "react", "pin_message", "accept_answer", "search_messages",
]
USER_ROUTES = ["GET /study-groups", "GET /study-groups/{id}/messages", "GET /search", "POST /study-groups/{id}/attachments"]
SERVICE_ROUTES = ["POST /study-groups/{id}/messages", "POST /study-groups/{id}/membership-changed"]
ROUTES = USER_ROUTES + SERVICE_ROUTES

USER = {"non-member": DAN, "no-users-document": EVE, "member-elsewhere": CAROL, "sender-id-spoofing": CAROL}
TOKEN_IDENTITIES = {
    "forged-signature": lambda: make_token(ANA, secret=OTHER_SECRET),
    "expired-token": lambda: make_token(ANA, ttl=-60),
    "service-token": lambda: make_token("course-platform", role="service"),
}


def target(identity: str) -> str:
    """The group each attacker goes after: one it is not in (the spoofer: where Ana's id would pay)."""
    return {"non-member": MATHS, "no-users-document": MATHS}.get(identity, NOTES)


def payload(identity: str, event: str, scene: Scene) -> Any:
    group = target(identity)
    if identity == "sender-id-spoofing" and event in ("send_message", "typing", "mark_read",
                                                    "edit_message", "delete_message",
                                                    "react", "pin_message", "accept_answer"):
        group = MATHS  # Carol is a member here: only a believed sender_id could make Ana act
    message_id = scene.ana_message[group]
    payloads = {
        "list_groups": {},
        "join_group": {"group_id": group},
        "leave_group": {"group_id": group},
        "send_message": {"group_id": group, "content": "let me in", "client_msg_id": "intruder-1"},
        "get_history": {"group_id": group},
        "get_changes": {"group_id": group, "after_rev": 0},
        "typing": {"group_id": group, "is_typing": True},
        "mark_read": {"group_id": group, "seq": 3},
        "edit_message": {"group_id": group, "message_id": message_id, "content": "rewritten"},
        "delete_message": {"group_id": group, "message_id": message_id},
        "refresh_token": {"token": make_token(ANA)},  # becoming Ana on a connection of one's own
        "react": {"group_id": group, "message_id": message_id, "emoji": "👍", "on": True},
        "pin_message": {"group_id": group, "message_id": message_id, "pinned": True},
        "accept_answer": {"group_id": group, "question_id": message_id, "answer_id": None},
        "search_messages": {"query": SECRET, "group_id": group},
    }
    data = payloads[event]
    if identity == "sender-id-spoofing":
        data = {**data, "sender_id": ANA}
    return data


def expected_ack(identity: str, event: str) -> set[str] | dict[str, Any]:
    """The exact success ack, or the set of acceptable refusal codes."""
    if identity == "sender-id-spoofing":
        return {"forbidden"} if event == "send_message" else {"forbidden", "invalid_payload"}
    if event == "list_groups":
        groups = [] if identity != "member-elsewhere" else [MATHS, PHYSICS]
        return {"ok": True, "groups": groups}  # ids only; see _check_ack
    if event == "refresh_token":
        return {"forbidden"}
    if event == "leave_group":
        return {"ok": True}  # leaving a room one is not in is fine and reveals only that the group exists
    return {"not_member"}


@dataclass
class Scene:
    ana: ChatClient
    ben: ChatClient
    ana_message: dict[str, str]  # group -> id of one of Ana's messages there
    before: dict[str, Any]
    seen: dict[str, int]

    async def snapshot(self) -> dict[str, Any]:
        """Everything stored that a refused call could have changed, as members see it."""
        return {
            "maths": await self.ana.call("get_history", {"group_id": MATHS, "limit": 100}),
            "notes": await self.ana.call("get_history", {"group_id": NOTES, "limit": 100}),
            "physics": await self.ana.call("get_history", {"group_id": PHYSICS, "limit": 100}),
            # Joining a room one is already in changes nothing and tells nobody.
            "ana_join": await self.ana.call("join_group", {"group_id": MATHS, "limit": 1}),
            "ben_join": await self.ben.call("join_group", {"group_id": MATHS, "limit": 1}),
            "ana_groups": await self.ana.call("list_groups"),
            "ben_groups": await self.ben.call("list_groups"),
        }

    async def assert_untouched(self) -> None:
        after = await self.snapshot()
        maths = after["maths"]["messages"]
        assert [(m["sender_id"], m["content"]) for m in maths] == [(ANA, f"{SECRET} {i}") for i in range(1, 4)]
        assert [m["content"] for m in after["notes"]["messages"]] == [f"Ana's own {SECRET}"]
        assert after["physics"]["messages"] == []
        assert all(not m["deleted"] and m["edited_at"] is None for m in maths)
        for key, value in self.before.items():
            assert after[key] == value, key
        # Read markers: Ana has read nothing and has nothing unread; Ben read seq 1 of 3.
        assert (after["ana_join"]["last_read_seq"], after["ana_join"]["unread_count"]) == (0, 0)
        assert (after["ben_join"]["last_read_seq"], after["ben_join"]["unread_count"]) == (1, 2)
        for name, client in (("ben", self.ben), ("ana", self.ana)):
            await client.settle()
            assert client.received[self.seen[name]:] == [], name


@pytest.fixture
def store():
    store = seeded_store()
    store.add_group(NOTES, "Ana's notes", [ANA])
    return store


@pytest.fixture
async def scene(connect) -> Scene:
    ana = await connect(ANA)
    ids = {}
    for i in range(1, 4):
        ack = await ana.call("send_message", {"group_id": MATHS, "content": f"{SECRET} {i}", "client_msg_id": f"a-{i}"})
        assert ack["ok"], ack
        ids.setdefault(MATHS, ack["message"]["id"])
    ack = await ana.call("send_message", {"group_id": NOTES, "content": f"Ana's own {SECRET}"})
    ids[NOTES] = ack["message"]["id"]
    for group in (MATHS, NOTES):
        assert (await ana.call("join_group", {"group_id": group}))["ok"]
    ben = await connect(BEN)
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    assert (await ben.call("mark_read", {"group_id": MATHS, "seq": 1}))["last_read_seq"] == 1
    scene = Scene(ana, ben, ids, {}, {})
    scene.before = await scene.snapshot()
    for name, client in (("ben", ben), ("ana", ana)):
        await client.settle()
        scene.seen[name] = len(client.received)
    return scene


def _check_ack(identity: str, event: str, ack: Any) -> None:
    expected = expected_ack(identity, event)
    assert SECRET not in json.dumps(ack), ack
    if isinstance(expected, set):
        assert isinstance(ack, dict) and set(ack) == NO_LEAK and ack["ok"] is False, ack
        assert ack["error"]["code"] in expected, ack
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"], ack
    elif event == "list_groups":
        assert set(ack) == {"ok", "groups"} and ack["ok"] is True, ack
        assert [g["id"] for g in ack["groups"]] == expected["groups"], ack
        assert NOTES not in json.dumps(ack)
    else:
        assert ack == expected


# -- tokens that never get a connection --

async def _refused_handshake(server_url: str, token: str) -> Any:
    error = await refused(server_url, auth={"token": token})
    return error["data"] if isinstance(error, dict) else error


async def _event_on_a_refused_connection(server_url: str, token: str, event: str, data: Any) -> list[str]:
    """Sign in with ``token`` (refused), send the event with ack id 1 anyway: the server closes
    the connection, as the reference server does for a packet of a namespace the client is not
    connected to, and answers nothing; every frame that came back."""
    frames: list[str] = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")

        async def receive() -> str:
            while True:
                text = await ws.receive_str(timeout=10)
                if text != "2":
                    frames.append(text)
                    return text
                await ws.send_str("3")

        try:
            assert (await receive()).startswith("0{")
            await ws.send_str("40" + json.dumps({"token": token}))
            refusal = await receive()
            assert refusal.startswith("44") and json.loads(refusal[2:])["data"]["code"] == "unauthorized", refusal
            await ws.send_str("421" + json.dumps([event, data]))
            await ws.send_str("42" + json.dumps([event, data]))  # and without an ack
            while True:
                message = await ws.receive(timeout=10)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(message.data)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        finally:
            await ws.close()
    return frames


# -- the table --

@pytest.mark.parametrize(("identity", "action"), [
    (identity, action) for identity in IDENTITIES for action in EVENTS + ROUTES
    if not (identity == "service-token" and action in SERVICE_ROUTES)
])
async def test_refused_identities_read_write_and_broadcast_nothing(scene, connect, server_url, identity, action):
    if identity in TOKEN_IDENTITIES:
        token = TOKEN_IDENTITIES[identity]()
        if action in ROUTES:
            await _http_refused_with_401(server_url, action, token)
        else:
            error = await _refused_handshake(server_url, token)
            assert isinstance(error, dict) and set(error) == {"code", "message"}, error
            assert error["code"] == "unauthorized" and error["message"], error
            frames = await _event_on_a_refused_connection(server_url, token, action, payload("non-member", action, scene))
            assert not any(f.startswith("431") for f in frames), frames  # the refused event was never answered
            assert all(SECRET not in f for f in frames), frames
    elif action in ROUTES:
        await _http_as(server_url, identity, action)
    else:
        client = await connect(USER[identity])
        ack = await client.call(action, payload(identity, action, scene))
        _check_ack(identity, action, ack)
        assert client.sio.connected and (await client.call("list_groups"))["ok"] is True
    await scene.assert_untouched()


def _route_request(route: str, group: str, query: str = "") -> tuple[str, str, Any]:
    """Method, path and JSON body of one try at ``route`` aimed at ``group``."""
    method, path = route.split(" ", 1)
    body = {"content": f"let me in {SECRET}", "client_msg_id": "intruder-1"} if route == SERVICE_ROUTES[0] else None
    return method, path.replace("{id}", group) + query, body


async def _http_refused_with_401(server_url: str, route: str, token: str) -> None:
    method, path, body = _route_request(route, MATHS)
    async with aiohttp.ClientSession() as http:
        for header in (f"Bearer {token}", f"bearer {token}"):
            resp = await http.request(method, server_url + path, json=body, headers={"Authorization": header})
            assert resp.status == 401 and resp.content_type == "application/json", resp.status
            body = await resp.json()
            assert set(body) == NO_LEAK and body["error"]["code"] == "unauthorized", body
            assert SECRET not in json.dumps(body)


async def _http_as(server_url: str, identity: str, route: str) -> None:
    headers = {"Authorization": f"Bearer {make_token(USER[identity])}"}
    query = ""
    if identity == "sender-id-spoofing":
        headers |= {"X-User-Id": ANA, "X-Sender-Id": ANA}
        query = f"?sender_id={ANA}&user_id={ANA}&sub={ANA}"
    async with aiohttp.ClientSession() as http:
        if route == ROUTES[0]:
            resp = await http.get(f"{server_url}/study-groups{query}", headers=headers)
            assert resp.status == 200
            body = await resp.json()
            groups = [MATHS, PHYSICS] if USER[identity] == CAROL else []
            assert [g["id"] for g in body["groups"]] == groups, body
            assert NOTES not in json.dumps(body)
        elif route == ROUTES[1]:
            group = target(identity)
            resp = await http.get(f"{server_url}/study-groups/{group}/messages{query}", headers=headers)
            body = await resp.json()
            assert resp.status == 403 and set(body) == NO_LEAK and body["error"]["code"] == "not_member", body
            assert SECRET not in json.dumps(body)
        elif route == "POST /study-groups/{id}/attachments":
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(f"notes {SECRET}\n".encode()), filename="notes.txt")
            resp = await http.post(f"{server_url}/study-groups/{target(identity)}/attachments{query}", data=form,
                                   headers=headers)
            body = await resp.json()
            assert resp.status == 403 and set(body) == NO_LEAK and body["error"]["code"] == "not_member", body
        elif route == "GET /search":
            sep = "&" if query else "?"
            resp = await http.get(f"{server_url}/search{query}{sep}q={SECRET}&group_id={target(identity)}",
                                  headers=headers)
            body = await resp.json()
            assert resp.status == 403 and set(body) == NO_LEAK and body["error"]["code"] == "not_member", body
            # Across the caller's own groups: nothing of the groups it is not in.
            resp = await http.get(f"{server_url}/search{query}{sep}q={SECRET}", headers=headers)
            body = await resp.json()
            assert resp.status == 200 and body["ok"] is True, body
            assert {m["group_id"] for m in body["results"]} <= ({MATHS} if USER[identity] == CAROL else set()), body
            assert "Ana's own" not in json.dumps(body)
        else:  # the platform's routes: no user may call them, in a group of theirs or not
            for group in (target(identity), MATHS):
                method, path, data = _route_request(route, group, query)
                resp = await http.request(method, server_url + path, json=data, headers=headers)
                body = await resp.json()
                assert resp.status == 403 and set(body) == NO_LEAK and body["error"]["code"] == "forbidden", body


# -- around the table --

def test_the_table_covers_every_event_and_route(settings, store):
    """A new event or route must join the table above."""
    from handlers.schemas import SCHEMAS
    from server.app import create_app

    assert set(EVENTS) == set(SCHEMAS)
    app = create_app(settings, storage=store)
    routes = {
        f"{r.method} {r.resource.canonical}" for r in app.router.routes()
        if r.resource.canonical.startswith(("/study-groups", "/search")) and r.method not in ("HEAD", "OPTIONS")
    }
    assert {route.replace("{id}", "{group_id}") for route in ROUTES} == routes


async def test_members_can_still_do_all_of_it_after_the_refusals(scene):
    """The refusals above are about who asks, not about the payloads: the same calls from Ana work."""
    maths_id = scene.ana_message[MATHS]
    for event, data in [
        ("get_history", {"group_id": NOTES}),
        ("get_changes", {"group_id": NOTES, "after_rev": 0}),
        ("typing", {"group_id": MATHS, "is_typing": True}),
        ("mark_read", {"group_id": MATHS, "seq": 3}),
        ("send_message", {"group_id": MATHS, "content": "hello", "sender_id": ANA}),
        ("edit_message", {"group_id": MATHS, "message_id": maths_id, "content": "rewritten"}),
        ("react", {"group_id": MATHS, "message_id": maths_id, "emoji": "👍", "on": True}),
        ("pin_message", {"group_id": MATHS, "message_id": maths_id, "pinned": True}),
        ("delete_message", {"group_id": MATHS, "message_id": maths_id}),
        ("refresh_token", {"token": make_token(ANA)}),
    ]:
        ack = await scene.ana.call(event, data)
        assert ack["ok"] is True, (event, ack)
    seen = scene.seen["ben"]
    await scene.ben.wait_for(lambda: len(scene.ben.received) >= seen + 6)
    await scene.ben.settle()
    assert [event for event, _ in scene.ben.received[seen:]] == [
        "typing", "message", "message_updated", "message_updated", "message_updated", "message_deleted"]
