"""Bad input for every client event: refused with ``invalid_payload`` naming the field, changing nothing.

Each refusal is checked the way a client would see it: the exact error envelope,
the history and read markers unchanged, no event reaching another member of the
room, and the same connection still usable afterwards.
"""

from __future__ import annotations

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
    MATHS,
    NOWHERE,
    PHYSICS,
    ChatClient,
    make_token,
)
from tests.support.raw import RawSocket

MAX_SAFE = 2**53 - 1
OWN = "<id of a message the caller sent>"  # placeholder, filled in at run time
NO_SUCH_MESSAGE = "65c0000000000000000000ee"

# A valid payload for each event; each case below breaks exactly one thing.
BASE: dict[str, dict[str, Any]] = {
    "list_groups": {},
    "join_group": {"group_id": MATHS},
    "leave_group": {"group_id": MATHS},
    "send_message": {"group_id": MATHS, "content": "hello"},
    "get_history": {"group_id": MATHS},
    "typing": {"group_id": MATHS, "is_typing": True},
    "mark_read": {"group_id": MATHS, "seq": 2},
    "edit_message": {"group_id": MATHS, "message_id": OWN, "content": "changed"},
    "delete_message": {"group_id": MATHS, "message_id": OWN},
    "refresh_token": {"token": make_token(ANA)},
}

# event -> field -> (kind of value, required)
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "list_groups": {},
    "join_group": {"group_id": ("id", True), "since_seq": ("seq", False), "limit": ("limit", False)},
    "leave_group": {"group_id": ("id", True)},
    "send_message": {
        "group_id": ("id", True),
        "content": ("content", True),
        "client_msg_id": ("client_msg_id", False),
        "sender_id": ("id", False),
    },
    "get_history": {
        "group_id": ("id", True),
        "before_seq": ("before_seq", False),
        "after_seq": ("seq", False),
        "limit": ("limit", False),
    },
    "typing": {"group_id": ("id", True), "is_typing": ("bool", True)},
    "mark_read": {"group_id": ("id", True), "seq": ("seq", True)},
    "edit_message": {"group_id": ("id", True), "message_id": ("id", True), "content": ("content", True)},
    "delete_message": {"group_id": ("id", True), "message_id": ("id", True)},
    "refresh_token": {"token": ("token", True)},
}

_NOT_A_STRING = [("true", True), ("int", 5), ("float", 1.5), ("list", ["x"]), ("object", {"x": "y"})]
_NOT_AN_INTEGER = [
    ("true", True), ("false", False), ("float", 1.5), ("string", "5"), ("list", [5]), ("object", {"n": 5}),
]
BAD_VALUES: dict[str, list[tuple[str, Any]]] = {
    "id": [
        *_NOT_A_STRING,
        ("list-of-id", [MATHS]),
        ("object-id", {"$oid": MATHS}),
        ("empty", ""),
        ("23-chars", MATHS[:23]),
        ("25-chars", MATHS + "0"),
        ("non-hex", MATHS[:23] + "g"),
        ("padded", f" {MATHS[:22]} "),
        ("lone-surrogate", MATHS[:23] + "\ud800"),
    ],
    "seq": [*_NOT_AN_INTEGER, ("-1", -1), ("2**53", 2**53)],
    "before_seq": [*_NOT_AN_INTEGER, ("0", 0), ("-1", -1), ("2**53", 2**53)],
    "limit": [*_NOT_AN_INTEGER, ("0", 0), ("101", 101), ("-1", -1)],
    "bool": [("string-true", "true"), ("string-false", "false"), ("1", 1), ("0", 0), ("list", [True]),
             ("object", {"v": True})],
    "content": [
        *_NOT_A_STRING,
        ("empty", ""),
        ("spaces", "   "),
        ("unicode-whitespace", "\n\t\u3000"),
        ("nbsp-and-em-space", "\u00a0\u2003\u2029"),
        ("4001-chars", "x" * 4001),
        ("4001-emoji", "\U0001F600" * 4001),
        ("lone-high-surrogate", "\ud800"),
        ("lone-low-surrogate-inside", "ab\udc00cd"),
    ],
    "token": [*_NOT_A_STRING, ("empty", ""), ("8193-chars", "t" * 8193), ("lone-surrogate", "a.b.\ud800")],
    "client_msg_id": [
        *_NOT_A_STRING,
        ("empty", ""),
        ("65-chars", "c" * 65),
        ("bell", "c-\x07"),
        ("newline", "c\n1"),
        ("lone-surrogate", "c-\ud800"),
    ],
}

NON_OBJECTS = [("string", "hello"), ("number", 5), ("list", [{"group_id": MATHS}]), ("true", True)]


def _cases():
    for event, fields in FIELDS.items():
        base = BASE[event]
        for name, (kind, required) in fields.items():
            for label, value in BAD_VALUES[kind]:
                yield pytest.param(event, {**base, name: value}, name, id=f"{event}-{name}={label}")
            if required:
                missing = {k: v for k, v in base.items() if k != name}
                yield pytest.param(event, missing, name, id=f"{event}-{name}-missing")
                yield pytest.param(event, {**base, name: None}, name, id=f"{event}-{name}=null")
        yield pytest.param(event, {**base, "colour": "blue"}, "colour", id=f"{event}-unknown-field")
        yield pytest.param(event, {**base, "senderId": ANA}, "senderId", id=f"{event}-unknown-field-2")
        yield pytest.param(event, {**base, "colour": None}, "colour", id=f"{event}-unknown-field-null")
        for label, value in NON_OBJECTS:
            # No field to name: any non-empty details will do.
            yield pytest.param(event, value, None, id=f"{event}-payload-is-{label}")
        if event != "list_groups":
            yield pytest.param(event, None, None, id=f"{event}-no-payload")
    yield pytest.param(
        "get_history", {"group_id": MATHS, "before_seq": 5, "after_seq": 1}, ("before_seq", "after_seq"),
        id="get_history-before_seq-and-after_seq",
    )
    yield pytest.param(
        "send_message", {"group_id": MATHS, "content": " ", "sender_id": BEN}, "content",
        id="send_message-invalid-before-forbidden-sender_id",
    )


def assert_invalid(ack: Any, field: str | tuple[str, ...] | None) -> None:
    """The exact ``invalid_payload`` envelope, with ``details`` naming ``field``."""
    assert isinstance(ack, dict) and set(ack) == {"ok", "error"}, ack
    assert ack["ok"] is False, ack
    error = ack["error"]
    assert set(error) == {"code", "message", "details"}, ack
    assert error["code"] == "invalid_payload", ack
    assert isinstance(error["message"], str) and error["message"], ack
    details = error["details"]
    assert isinstance(details, dict) and details, ack
    for key, messages in details.items():
        assert isinstance(key, str), ack
        assert isinstance(messages, list) and messages, ack
        assert all(isinstance(m, str) and m for m in messages), ack
    if isinstance(field, str):
        assert field in details, ack
    elif field is not None:
        assert set(field) & set(details), ack


def _fill(payload: Any, own_id: str) -> Any:
    if isinstance(payload, dict):
        return {k: (own_id if v == OWN else v) for k, v in payload.items()}
    return payload


async def _send(client: ChatClient, content: str, group: str = MATHS) -> dict[str, Any]:
    ack = await client.call("send_message", {"group_id": group, "content": content})
    assert ack["ok"], ack
    return ack["message"]


@dataclass
class Scene:
    ana: ChatClient  # the caller, a member of Maths who sent OWN
    ben: ChatClient  # another member, in the Maths room, watching
    own_id: str

    async def state(self) -> tuple[Any, ...]:
        """What a client can see of stored state: history and the read marker/unread counts."""
        history = await self.ana.call("get_history", {"group_id": MATHS, "limit": 100})
        groups = await self.ana.call("list_groups")
        assert history["ok"] and groups["ok"]
        return history, groups

    async def assert_still_works_and_nothing_was_broadcast(self, seen: int) -> None:
        control = await _send(self.ana, "control")
        await self.ben.wait_for(lambda: any(m["id"] == control["id"] for m in self.ben.events("message")))
        assert self.ben.received[seen:] == [("message", control)]


@pytest.fixture
async def scene(connect) -> Scene:
    ana = await connect(ANA)
    own = await _send(ana, "Ana's note")
    ben = await connect(BEN)
    await _send(ben, "Ben's note")  # unread for Ana: a wrong mark_read would show
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    await ben.settle()
    return Scene(ana, ben, own["id"])


@pytest.mark.parametrize(("event", "payload", "field"), list(_cases()))
async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(scene, event, payload, field):
    before = await scene.state()
    seen = len(scene.ben.received)
    ack = await scene.ana.call(event, _fill(payload, scene.own_id))
    assert_invalid(ack, field)
    assert await scene.state() == before
    await scene.assert_still_works_and_nothing_was_broadcast(seen)


ACCEPTED = [
    ("join_group", {"group_id": MATHS, "limit": 1}),
    ("join_group", {"group_id": MATHS, "limit": 100}),
    ("join_group", {"group_id": MATHS, "since_seq": 0}),
    ("join_group", {"group_id": MATHS, "since_seq": MAX_SAFE}),
    ("join_group", {"group_id": MATHS, "since_seq": None, "limit": None}),
    ("get_history", {"group_id": MATHS, "limit": 1}),
    ("get_history", {"group_id": MATHS, "limit": 100}),
    ("get_history", {"group_id": MATHS, "after_seq": 0}),
    ("get_history", {"group_id": MATHS, "after_seq": MAX_SAFE}),
    ("get_history", {"group_id": MATHS, "before_seq": 1}),
    ("get_history", {"group_id": MATHS, "before_seq": MAX_SAFE}),
    ("get_history", {"group_id": MATHS, "before_seq": None, "after_seq": None, "limit": None}),
    ("get_history", {"group_id": MATHS, "before_seq": 2, "after_seq": None}),
    ("mark_read", {"group_id": MATHS, "seq": 0}),
    ("mark_read", {"group_id": MATHS, "seq": MAX_SAFE}),
    ("typing", {"group_id": MATHS, "is_typing": False}),
    ("send_message", {"group_id": MATHS, "content": "x", "client_msg_id": None, "sender_id": None}),
    ("send_message", {"group_id": MATHS, "content": "x", "client_msg_id": "c" * 64}),
    ("send_message", {"group_id": MATHS, "content": "x", "client_msg_id": "ñandú-✓"}),
    ("send_message", {"group_id": MATHS, "content": "x" * 4000}),
    ("send_message", {"group_id": MATHS, "content": "\U0001F600" * 4000}),
    ("edit_message", {"group_id": MATHS, "message_id": OWN, "content": "é" * 4000}),
    ("delete_message", {"group_id": MATHS, "message_id": OWN}),
    ("leave_group", {"group_id": MATHS}),
    ("refresh_token", {"token": make_token(ANA), "sender_id": None}),
]


def _accepted_id(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 60 else text[:40] + f"…({len(text)} chars)"


@pytest.mark.parametrize(("event", "payload"), ACCEPTED, ids=[f"{e}-{_accepted_id(p)}" for e, p in ACCEPTED])
async def test_boundary_values_and_null_optionals_are_accepted(scene, event, payload):
    payload = _fill(payload, scene.own_id)
    ack = await scene.ana.call(event, payload)
    assert ack["ok"] is True, ack
    if event in ("send_message", "edit_message"):
        assert ack["message"]["content"] == payload["content"]
        history = await scene.ana.call("get_history", {"group_id": MATHS})
        stored = {m["id"]: m for m in history["messages"]}[ack["message"]["id"]]
        assert stored["content"] == payload["content"]
        if payload.get("client_msg_id"):
            assert stored["client_msg_id"] == payload["client_msg_id"]
    if "limit" in payload and payload["limit"] is not None:
        assert len(ack["messages"]) <= payload["limit"]
    if event == "mark_read":
        assert ack["last_read_seq"] == min(payload["seq"], 2)


async def test_4000_emoji_arrive_intact_at_other_members(scene):
    content = "\U0001F4DA" * 4000  # 4,000 code points, 16,000 bytes of UTF-8
    sent = await _send(scene.ana, content)
    received = await scene.ben.wait_event("message")
    assert received[-1]["content"] == content and received[-1]["id"] == sent["id"]
    history = await scene.ben.call("get_history", {"group_id": MATHS, "after_seq": sent["seq"] - 1})
    assert history["messages"][0]["content"] == content


async def test_ids_in_upper_or_mixed_case_are_accepted_and_answered_in_lower_case(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    upper, mixed = MATHS.upper(), MATHS[:12].upper() + MATHS[12:]
    join = await ben.call("join_group", {"group_id": upper})
    assert join["ok"] and join["group"]["id"] == MATHS
    sent = await ana.call("send_message", {"group_id": mixed, "content": "hi", "sender_id": ANA.upper()})
    message = sent["message"]
    assert message["group_id"] == MATHS and message["sender_id"] == ANA
    assert message["id"] == message["id"].lower()
    assert (await ben.wait_event("message")) == [message]  # the room is the lowercase id

    history = await ana.call("get_history", {"group_id": upper})
    assert [m["group_id"] for m in history["messages"]] == [MATHS]
    assert (await ana.call("typing", {"group_id": upper, "is_typing": True})) == {"ok": True}
    typing = (await ben.wait_event("typing"))[0]
    assert typing["group_id"] == MATHS and typing["user_id"] == ANA
    read = await ben.call("mark_read", {"group_id": mixed, "seq": 1})
    assert read["ok"] and read["last_read_seq"] == 1

    edited = await ana.call(
        "edit_message", {"group_id": upper, "message_id": message["id"].upper(), "content": "hi!"}
    )
    assert edited["ok"] and edited["message"]["id"] == message["id"]
    assert edited["message"]["group_id"] == MATHS
    assert (await ben.wait_event("message_updated"))[0]["group_id"] == MATHS
    deleted = await ana.call("delete_message", {"group_id": mixed, "message_id": message["id"].upper()})
    assert deleted["ok"] and deleted["message"]["id"] == message["id"] and deleted["message"]["deleted"]
    assert (await ben.wait_event("message_deleted"))[0]["id"] == message["id"]

    assert await ben.call("leave_group", {"group_id": upper}) == {"ok": True}
    await _send(ana, "after Ben left")
    await ben.settle()
    assert [m["content"] for m in ben.events("message")] == ["hi"]


async def test_lone_surrogate_from_the_python_client_arrives_and_is_refused(scene):
    seen = len(scene.ben.received)
    before = await scene.state()
    ack = await scene.ana.call("send_message", {"group_id": MATHS, "content": "x\ud800y", "client_msg_id": "s-1"})
    assert_invalid(ack, "content")
    assert await scene.state() == before
    await scene.assert_still_works_and_nothing_was_broadcast(seen)


@pytest.mark.parametrize(
    ("field", "template"),
    [
        ("content", '{"group_id":"%s","content":"\\ud800"}'),
        ("content", '{"group_id":"%s","content":"ok \\udfff"}'),
        ("client_msg_id", '{"group_id":"%s","content":"hi","client_msg_id":"\\ud83d"}'),
    ],
    ids=["content-high", "content-low", "client_msg_id"],
)
async def test_lone_surrogate_in_hand_written_packet_is_refused(scene, server_url, field, template):
    seen = len(scene.ben.received)
    before = await scene.state()
    packet = '["send_message",' + (template % MATHS) + "]"
    assert "\\ud" in packet  # the escape itself travels, not a replacement character
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        try:
            assert_invalid(await raw.call(1, packet), field)
            # The same raw connection still works.
            ok = await raw.call(2, json.dumps(["get_history", {"group_id": MATHS}]))
            assert ok["ok"] is True
        finally:
            await raw.ws.close()
    assert await scene.state() == before
    await scene.assert_still_works_and_nothing_was_broadcast(seen)


# -- the order of refusals for edit_message and delete_message --

ORDER_CASES = [
    # caller, group, message, expected code
    (DAN, NOWHERE, "not-an-id", "invalid_payload"),
    (DAN, NOWHERE, "maths", "group_not_found"),
    (BEN, NOWHERE, "maths", "group_not_found"),
    (DAN, MATHS, NO_SUCH_MESSAGE, "not_member"),
    (DAN, MATHS, "maths", "not_member"),
    (BEN, PHYSICS, "physics", "not_member"),  # Ben is not in Physics
    (BEN, MATHS, NO_SUCH_MESSAGE, "message_not_found"),
    (BEN, MATHS, "physics", "message_not_found"),  # in another group, and not his
    (CAROL, MATHS, "physics", "message_not_found"),  # a member of both groups
    (ANA, MATHS, "physics", "message_not_found"),  # her own message, but in another group
    (BEN, MATHS, "maths", "forbidden"),
    (CAROL, PHYSICS, "physics", "forbidden"),
]


@pytest.mark.parametrize("event", ["edit_message", "delete_message"])
@pytest.mark.parametrize(
    ("caller", "group", "message", "code"), ORDER_CASES,
    ids=[f"{i}-{c[3]}" for i, c in enumerate(ORDER_CASES)],
)
async def test_edit_and_delete_refusals_come_in_the_documented_order(connect, event, caller, group, message, code):
    ana = await connect(ANA)
    ids = {
        "maths": (await _send(ana, "secret maths note", MATHS))["id"],
        "physics": (await _send(ana, "secret physics note", PHYSICS))["id"],
    }
    for g in (MATHS, PHYSICS):
        assert (await ana.call("join_group", {"group_id": g}))["ok"]
    before = [await ana.call("get_history", {"group_id": g}) for g in (MATHS, PHYSICS)]
    await ana.settle()
    seen = len(ana.received)

    client = ana if caller == ANA else await connect(caller)
    payload = {"group_id": group, "message_id": ids.get(message, message)}
    if event == "edit_message":
        payload["content"] = "rewritten"
    ack = await client.call(event, payload)
    if code == "invalid_payload":
        assert_invalid(ack, "message_id")
    else:
        assert ack == {"ok": False, "error": {"code": code, "message": ack["error"]["message"]}}, ack
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    assert "secret" not in json.dumps(ack)

    assert [await ana.call("get_history", {"group_id": g}) for g in (MATHS, PHYSICS)] == before
    await ana.settle()
    assert ana.received[seen:] == []  # nothing broadcast to the rooms
    assert client.sio.connected and (await client.call("list_groups"))["ok"]


async def test_editing_with_bad_content_is_invalid_before_forbidden(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    message = await _send(ana, "mine")
    ack = await ben.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "\t"})
    assert_invalid(ack, "content")
    ack = await ben.call("edit_message", {"group_id": NOWHERE, "message_id": message["id"], "content": ""})
    assert_invalid(ack, "content")


async def test_editing_a_deleted_message_is_message_not_found_even_for_its_sender(connect):
    ana = await connect(ANA)
    message = await _send(ana, "soon gone")
    assert (await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]}))["ok"]
    ack = await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "back"})
    assert ack["ok"] is False and ack["error"]["code"] == "message_not_found", ack
    history = await ana.call("get_history", {"group_id": MATHS})
    assert history["messages"][0]["deleted"] is True and history["messages"][0]["content"] == ""


async def test_a_spoofed_sender_id_is_forbidden_before_not_member(connect):
    dan = await connect(DAN)
    ack = await dan.call("send_message", {"group_id": MATHS, "content": "hi", "sender_id": ANA})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden", ack
    ana = await connect(ANA)
    assert (await ana.call("get_history", {"group_id": MATHS}))["messages"] == []


def test_event_schemas_declare_no_hook_of_their_own():
    """The plain loader (``handlers.schemas._plain_loader``) runs no marshmallow hook but
    ``EventSchema._drop_nulls``: a schema with another hook would load differently there."""
    from handlers.schemas import SCHEMAS

    for event, schema in SCHEMAS.items():
        hooks = {kind: [name for name, *_ in entries] for kind, entries in schema._hooks.items() if entries}
        assert hooks == {"pre_load": ["_drop_nulls"]}, (event, hooks)


def test_the_plain_loader_runs_each_field_s_own_rule_and_not_marshmallow_s_general_steps(monkeypatch):
    """Every acked send is loaded by the plain loader: a valid ``send_message`` payload goes
    through the fields' own ``_deserialize`` and not ``Field.deserialize``'s general steps
    (missing and null checks, validators, hooks), which were most of its cost."""
    from marshmallow import fields

    from handlers import schemas

    steps = []
    general = fields.Field._validate_missing
    monkeypatch.setattr(fields.Field, "_validate_missing", lambda self, value: steps.append(value) or general(self, value))
    payload = {"group_id": MATHS.upper(), "content": "hello", "client_msg_id": "c-1", "mentions": [BEN]}
    loaded = schemas.load("send_message", (payload,))
    assert steps == []
    assert loaded == {"group_id": MATHS, "content": "hello", "client_msg_id": "c-1", "mentions": [BEN]}
    # Null for a required nullable field is a value there too.
    assert schemas.load("accept_answer", ({"group_id": MATHS, "question_id": BEN, "answer_id": None},))["answer_id"] is None
