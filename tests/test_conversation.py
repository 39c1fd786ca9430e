"""Conversation events over a real server with python-socketio clients: replies,
questions and accepted answers, reactions, pins, filtered histories, the counts,
moderators, and the webhooks replies and accepted answers cause."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from cluster.rate_limits import Bucket, RateLimits
from tests.support.chat import ANA, BEN, CAROL, DAN, MATHS, PHYSICS, make_settings, make_token
from tests.support.chat import both_stores as backend
from tests.support.webhooks import WEBHOOK_SECRET, receiver

THUMBS = "👍🏽"


async def joined(connect, user: str, group: str = MATHS, **auth: Any):
    client = await connect(user, token=make_token(user, **auth)) if auth else await connect(user)
    ack = await client.call("join_group", {"group_id": group})
    assert ack["ok"], ack
    return client


async def send(client, content: str, group: str = MATHS, **extra: Any) -> dict[str, Any]:
    ack = await client.call("send_message", {"group_id": group, "content": content, **extra})
    assert ack["ok"], ack
    return ack["message"]


def code(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    return ack["error"]["code"]


async def updates(client, count: int) -> list[dict[str, Any]]:
    return await client.wait_event("message_updated", count)


async def test_a_reply_quotes_the_message_and_reaches_the_room(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    original = await send(ben, "La derivada de x² es 2x " + "·" * 150)
    reply = await send(ana, "¡Gracias!", reply_to=original["id"].upper())
    assert reply["reply_to"] == {
        "id": original["id"], "seq": original["seq"], "sender_id": BEN, "sender_name": "Ben Okafor",
        "excerpt": original["content"][:140], "deleted": False,
    }
    assert reply in await ben.wait_event("message", 2)
    # A deleted message may be replied to; its quote is empty.
    assert (await ben.call("delete_message", {"group_id": MATHS, "message_id": original["id"]}))["ok"]
    late = await send(ana, "too late", reply_to=original["id"])
    assert (late["reply_to"]["excerpt"], late["reply_to"]["deleted"]) == ("", True)
    # Another group's message, or none at all, is not found.
    physics = await send(ana, "physics", group=PHYSICS)
    for bad in (physics["id"], "65" + "0" * 22):
        ack = await ana.call("send_message", {"group_id": MATHS, "content": "x", "reply_to": bad})
        assert code(ack) == "message_not_found"


async def test_questions_answers_and_the_unanswered_filter(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    asked = await send(ana, "¿Cómo resolvió el ejercicio 3?", kind="question")
    assert (asked["kind"], asked["answer_id"]) == ("question", None)
    other = await send(ben, "What about 4?", kind="question")
    answer = await send(ben, "Con la regla de la cadena")
    assert (await ben.call("join_group", {"group_id": MATHS}))["open_questions"] == 2
    # Only the asker accepts, only a later live message of the group, only on a question.
    assert code(await ben.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"],
                                                  "answer_id": answer["id"]})) == "forbidden"
    assert code(await ana.call("accept_answer", {"group_id": MATHS, "question_id": answer["id"],
                                                  "answer_id": None})) == "invalid_payload"
    earlier = await ana.call("accept_answer", {"group_id": MATHS, "question_id": other["id"], "answer_id": asked["id"]})
    assert code(earlier) in ("forbidden", "invalid_payload")
    ack = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": answer["id"]})
    assert ack["ok"] and ack["message"]["answer_id"] == answer["id"] and ack["message"]["rev"] == answer["rev"] + 1
    assert (await updates(ben, 1))[-1] == ack["message"]
    unanswered = await ana.call("get_history", {"group_id": MATHS, "filter": "unanswered"})
    assert [m["id"] for m in unanswered["messages"]] == [other["id"]]
    questions = await ana.call("get_history", {"group_id": MATHS, "filter": "questions"})
    assert [m["id"] for m in questions["messages"]] == [asked["id"], other["id"]]
    groups = {g["id"]: g for g in (await ana.call("list_groups"))["groups"]}
    assert groups[MATHS]["open_questions"] == 1
    # Accepting the same again changes nothing and tells nobody; null takes it back.
    again = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": answer["id"]})
    assert again["message"]["rev"] == ack["message"]["rev"]
    back = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": None})
    assert back["message"]["answer_id"] is None
    await ben.settle()
    assert len(ben.events("message_updated")) == 2


async def test_accepting_an_answer_from_another_group_is_not_found(connect):
    ana = await joined(connect, ANA)
    asked = await send(ana, "Which formula?", kind="question")
    elsewhere = await send(ana, "this one", group=PHYSICS)
    ack = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": elsewhere["id"]})
    assert code(ack) == "message_not_found"
    deleted = await send(ana, "deleted answer")
    await ana.call("delete_message", {"group_id": MATHS, "message_id": deleted["id"]})
    ack = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": deleted["id"]})
    assert code(ack) == "message_not_found"


async def test_reactions_are_shared_idempotent_and_refused_on_deleted_messages(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    message = await send(ana, "Exam on Friday")
    react = {"group_id": MATHS, "message_id": message["id"], "emoji": THUMBS, "on": True}
    first = await ben.call("react", react)
    assert first["message"]["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [BEN]}]
    assert (await updates(ana, 1))[0] == first["message"]
    assert (await ben.call("react", react))["message"] == first["message"]  # nothing new, no broadcast
    for bad in ("a", "👍👍", " 👍", "🏻", "❤", "", 1, None):
        ack = await ben.call("react", {**react, "emoji": bad})
        assert code(ack) == "invalid_payload" and "emoji" in ack["error"]["details"], bad
    assert (await ana.call("react", {**react, "emoji": "👨‍👩‍👧"}))["ok"]  # a ZWJ sequence is one emoji
    off = await ben.call("react", {**react, "on": False})
    assert [r["emoji"] for r in off["message"]["reactions"]] == ["👨‍👩‍👧"]
    await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]})
    assert code(await ben.call("react", react)) == "message_not_found"
    await ana.settle()
    assert len(ana.events("message_updated")) == 3


async def test_pins_and_the_pinned_filter(connect, server_url):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    exam = await send(ana, "Examen: viernes 10:00, aula 3")
    await send(ben, "ok")
    ack = await ben.call("pin_message", {"group_id": MATHS, "message_id": exam["id"], "pinned": True})
    assert ack["ok"] and ack["message"]["pinned"]["by"] == BEN
    assert (await updates(ana, 1))[0] == ack["message"]
    pinned = await ana.call("get_history", {"group_id": MATHS, "filter": "pinned"})
    assert [m["id"] for m in pinned["messages"]] == [exam["id"]] and pinned["has_more"] is False
    off = await ana.call("pin_message", {"group_id": MATHS, "message_id": exam["id"], "pinned": False})
    assert off["message"]["pinned"] is None
    assert (await ana.call("get_history", {"group_id": MATHS, "filter": "pinned"}))["messages"] == []
    bad = await ana.call("get_history", {"group_id": MATHS, "filter": "everything"})
    assert code(bad) == "invalid_payload" and "filter" in bad["error"]["details"]
    # The HTTP history takes the same filter.
    await ana.call("pin_message", {"group_id": MATHS, "message_id": exam["id"], "pinned": True})
    route = f"{server_url}/study-groups/{MATHS}/messages"
    headers = {"Authorization": f"Bearer {make_token(BEN)}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(route, params={"filter": "pinned"}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 200 and [m["id"] for m in body["messages"]] == [exam["id"]]
        async with http.get(route, params={"filter": ""}, headers=headers) as resp:
            assert resp.status == 400 and "filter" in (await resp.json())["error"]["details"]


async def test_mentions_count_until_read_and_filter(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    first = await send(ana, "@Ben mira esto", mentions=[BEN])
    await send(ana, "@Ben y esto", mentions=[BEN])
    await send(ben, "@Ben (myself)", mentions=[BEN])
    listed = {g["id"]: g for g in (await ben.call("list_groups"))["groups"]}
    assert listed[MATHS]["mention_count"] == 2
    mine = await ben.call("get_history", {"group_id": MATHS, "filter": "mentions"})
    assert [m["seq"] for m in mine["messages"]] == [1, 2]
    read = await ben.call("mark_read", {"group_id": MATHS, "seq": first["seq"]})
    assert read["mention_count"] == 1
    assert (await ben.call("join_group", {"group_id": MATHS}))["mention_count"] == 1


async def test_refusal_order_for_the_new_events(connect):
    ana, dan = await joined(connect, ANA), await connect(DAN)
    message = await send(ana, "hi")
    carol = await connect(CAROL)
    outsider = "65b0000000000000000000ff"
    # invalid_payload before group_not_found before not_member before message_not_found before forbidden.
    assert code(await dan.call("react", {"group_id": outsider, "message_id": "x", "emoji": THUMBS, "on": True})) \
        == "invalid_payload"
    assert code(await dan.call("pin_message", {"group_id": outsider, "message_id": message["id"], "pinned": True})) \
        == "group_not_found"
    assert code(await dan.call("react", {"group_id": MATHS, "message_id": message["id"], "emoji": THUMBS, "on": True})) \
        == "not_member"
    missing = "65" + "1" * 22
    assert code(await carol.call("accept_answer", {"group_id": MATHS, "question_id": missing, "answer_id": None})) \
        == "message_not_found"
    ack = await carol.call("pin_message", {"group_id": MATHS, "message_id": message["id"], "pinned": True,
                                           "sender_id": ANA})
    assert code(ack) == "forbidden"
    unknown = await carol.call("pin_message", {"group_id": MATHS, "message_id": message["id"], "pinned": "yes",
                                               "colour": "red"})
    assert code(unknown) == "invalid_payload" and set(unknown["error"]["details"]) == {"pinned", "colour"}


async def test_mentions_of_outsiders_or_more_than_fifty_are_refused(connect):
    ana = await joined(connect, ANA)
    ack = await ana.call("send_message", {"group_id": MATHS, "content": "hey", "mentions": [DAN]})
    assert code(ack) == "invalid_payload" and DAN in str(ack["error"]["details"]["mentions"])
    many = [f"65{i:022x}" for i in range(51)]
    ack = await ana.call("send_message", {"group_id": MATHS, "content": "hey", "mentions": many})
    assert code(ack) == "invalid_payload" and "mentions" in ack["error"]["details"]


@pytest.fixture
def settings():
    # A smaller bucket for events other than sends, so a flood is over quickly on either store.
    return make_settings(jwt_moderator_claim="is_mod", rate_limits=RateLimits(other=Bucket(20.0, 60)))


async def test_moderators_delete_anyones_message_and_accept_answers(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    carol = await joined(connect, CAROL, is_mod=True)
    not_quite = await joined(connect, CAROL, is_mod="true")  # only a JSON true counts
    spam = await send(ana, "spam")
    assert code(await ben.call("delete_message", {"group_id": MATHS, "message_id": spam["id"]})) == "forbidden"
    assert code(await not_quite.call("delete_message", {"group_id": MATHS, "message_id": spam["id"]})) == "forbidden"
    ack = await carol.call("delete_message", {"group_id": MATHS, "message_id": spam["id"]})
    assert ack["ok"] and ack["message"]["deleted"] and ack["message"]["deleted_by"] == CAROL
    deleted = await ben.wait_event("message_deleted")
    assert deleted == [ack["message"]]
    own = await send(carol, "mine")
    mine = await carol.call("delete_message", {"group_id": MATHS, "message_id": own["id"]})
    assert mine["message"]["deleted_by"] is None
    asked = await send(ana, "Is it 42?", kind="question")
    answer = await send(ben, "Yes")
    ack = await carol.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": answer["id"]})
    assert ack["ok"] and ack["message"]["answer_id"] == answer["id"]


async def test_a_reaction_flood_is_rate_limited_and_costs_the_room_little(connect):
    ana, ben = await joined(connect, ANA), await joined(connect, BEN)
    message = await send(ana, "react to me")
    payloads = [{"group_id": MATHS, "message_id": message["id"], "emoji": THUMBS, "on": i % 2 == 0}
                for i in range(150)]
    flood = asyncio.gather(*(ben.call("react", p) for p in payloads))
    # Ana is not held back by Ben's flood.
    started = time.monotonic()
    assert (await ana.call("send_message", {"group_id": MATHS, "content": "still here"}))["ok"]
    assert time.monotonic() - started < 2.0
    acks = await flood
    limited = [a for a in acks if not a["ok"]]
    assert len(limited) >= 60
    assert all(a["error"]["code"] == "rate_limited" and a["error"]["retry_after_ms"] > 0 for a in limited)
    # Only reactions that were let through (and changed something: on and off may
    # arrive in any order) reached the room, in rev order.
    await ana.settle()
    revs = [m["rev"] for m in ana.events("message_updated")]
    assert 0 < len(revs) <= len(acks) - len(limited) and revs == sorted(set(revs))


@pytest.fixture
def webhook_settings(receiver):
    return make_settings(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, webhook_timeout_s=3.0)


async def test_replies_and_accepted_answers_notify_people_who_are_away(aiohttp_server, webhook_settings, store,
                                                                       receiver):
    from server.app import create_app
    from tests.support.chat import ChatClient

    server = await aiohttp_server(create_app(webhook_settings, storage=store))
    url = str(server.make_url("")).rstrip("/")
    import socketio

    clients = []

    async def client(user: str) -> ChatClient:
        sio = socketio.AsyncClient(reconnection=False)
        clients.append(sio)
        await sio.connect(url, auth={"token": make_token(user)}, transports=["websocket"], wait_timeout=10)
        return ChatClient(sio, user)

    try:
        ana, ben = await client(ANA), await client(BEN)
        for c in (ana, ben):
            assert (await c.call("join_group", {"group_id": MATHS}))["ok"]
        asked = await send(ben, "¿Alguien tiene los apuntes?", kind="question")
        await ben.call("leave_group", {"group_id": MATHS})  # Ben is away now
        reply = await send(ana, "Aquí están", reply_to=asked["id"])
        ack = await ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": reply["id"]})
        assert code(ack) == "forbidden"  # Ana did not ask
        await ben.call("join_group", {"group_id": MATHS})
        ack = await ben.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": reply["id"]})
        assert ack["ok"]
        await ana.call("leave_group", {"group_id": MATHS})  # too late: Ana was in the room when it was accepted
        (delivery,) = await receiver.wait_for(lambda: receiver.deliveries)
        payload = delivery.payload()
        assert payload["type"] == "chat.reply" and payload["data"]["user_id"] == BEN
        assert payload["data"]["message"]["id"] == reply["id"]
        # Away now: the next acceptance notifies Ana.
        await ben.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": None})
        later = await send(ana, "better answer")
        await ben.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": later["id"]})
        await receiver.wait_for(lambda: len(receiver.deliveries) >= 2)
        accepted = receiver.deliveries[1].payload()
        assert accepted["type"] == "chat.answer_accepted" and accepted["data"]["user_id"] == ANA
        assert accepted["data"]["message"]["id"] == asked["id"]
        assert accepted["data"]["message"]["answer_id"] == later["id"]
    finally:
        for sio in clients:
            await sio.disconnect()


def test_the_moderator_claim_is_a_setting():
    from server.config import Settings

    base = {"MONGODB_URI": "memory://", "JWT_SECRET": "x" * 32}
    assert Settings.from_env(base).jwt_moderator_claim == "chat_moderator"
    assert Settings.from_env({**base, "JWT_MODERATOR_CLAIM": "is_mod"}).jwt_moderator_claim == "is_mod"
