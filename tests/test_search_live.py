"""``search_messages`` and ``GET /search`` over a real server with python-socketio
clients and raw HTTP, on both stores: what a member finds, what nobody else does,
and how bad queries and floods are answered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from cluster.rate_limits import Bucket, RateLimits
from tests.support.chat import ANA, BEN, CAROL, DAN, MATHS, MESSAGE_FIELDS, NOWHERE, PHYSICS, make_settings, make_token
from tests.support.chat import both_stores as backend


async def send(client, content: str, group: str = MATHS) -> dict[str, Any]:
    ack = await client.call("send_message", {"group_id": group, "content": content})
    assert ack["ok"], ack
    return ack["message"]


def code(ack: dict[str, Any]) -> str:
    assert ack["ok"] is False, ack
    return ack["error"]["code"]


async def test_members_find_messages_of_their_groups_newest_first(connect, server_url):
    ana, ben = await connect(ANA), await connect(BEN)
    question = await send(ben, "¿Alguien resolvió las derivadas del ejercicio 3?")
    await send(ana, "Las notas de la semana pasada: https://example.edu/notas", PHYSICS)
    answer = await send(ana, "Sí, resolví las derivadas con la regla de la cadena")
    await send(ben, "Nada que ver")

    ack = await ana.call("search_messages", {"query": "RESOLVIO deriv"})
    assert ack == {"ok": True, "results": [ack["results"][0]], "has_more": False}
    assert ack["results"][0] == question and set(question) == MESSAGE_FIELDS
    both = await ana.call("search_messages", {"query": "las deriv", "limit": 1})
    assert [m["id"] for m in both["results"]] == [answer["id"]] and both["has_more"] is True
    older = await ana.call("search_messages", {"query": "las deriv", "group_id": MATHS, "before_seq": answer["seq"]})
    assert [m["id"] for m in older["results"]] == [question["id"]] and older["has_more"] is False
    # Across Ana's groups; Ben is not in Physics and never sees its messages.
    assert [m["group_id"] for m in (await ana.call("search_messages", {"query": "notas"}))["results"]] == [PHYSICS]
    assert (await ben.call("search_messages", {"query": "notas"}))["results"] == []

    # The HTTP route answers the same.
    headers = {"Authorization": f"Bearer {make_token(ANA)}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/search", params={"q": "RESOLVIO deriv"}, headers=headers) as resp:
            assert resp.status == 200 and await resp.json() == ack
        params = {"q": "las deriv", "group_id": MATHS, "before_seq": str(answer["seq"])}
        async with http.get(f"{server_url}/search", params=params, headers=headers) as resp:
            assert resp.status == 200 and await resp.json() == older


async def test_edits_and_deletes_change_what_is_found(connect):
    ana = await connect(ANA)
    message = await send(ana, "Examen el viernes")
    assert (await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"],
                                            "content": "Examen el lunes"}))["ok"]
    assert (await ana.call("search_messages", {"query": "viernes"}))["results"] == []
    assert [m["content"] for m in (await ana.call("search_messages", {"query": "lunes"}))["results"]] == ["Examen el lunes"]
    assert (await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]}))["ok"]
    assert (await ana.call("search_messages", {"query": "examen"}))["results"] == []


async def test_a_removed_member_no_longer_finds_the_group(connect, store):
    ben = await connect(BEN)
    await send(ben, "apuntes compartidos")
    assert len((await ben.call("search_messages", {"query": "apuntes"}))["results"]) == 1
    if hasattr(store, "set_members"):
        store.set_members(MATHS, [ANA, CAROL])
    else:
        from bson import ObjectId
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store._uri)
        await client[store._db_name].study_groups.update_one(
            {"_id": ObjectId(MATHS)}, {"$pull": {"members": ObjectId(BEN)}})
        await client.close()
    assert (await ben.call("search_messages", {"query": "apuntes"}))["results"] == []
    assert code(await ben.call("search_messages", {"query": "apuntes", "group_id": MATHS})) == "not_member"


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "query"),
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "¿?¡!"}, "query"),
    ({"query": "x" * 201}, "query"),
    ({"query": " ".join(["palabra"] * 11)}, "query"),
    ({"query": 5}, "query"),
    ({"query": ["a"]}, "query"),
    ({"query": "ok\ud800"}, "query"),
    ({"query": "ok", "limit": 0}, "limit"),
    ({"query": "ok", "limit": 101}, "limit"),
    ({"query": "ok", "before_seq": 0}, "before_seq"),
    ({"query": "ok", "before_seq": "5"}, "before_seq"),
    ({"query": "ok", "group_id": "nope"}, "group_id"),
    ({"query": "ok", "everything": True}, "everything"),
])
async def test_bad_queries_are_invalid_payload_naming_the_field(connect, payload, field):
    ana = await connect(ANA)
    ack = await ana.call("search_messages", payload)
    assert code(ack) == "invalid_payload" and field in ack["error"]["details"], ack


async def test_refusals_over_http_and_for_other_groups(connect, server_url):
    dan = await connect(DAN)
    assert code(await dan.call("search_messages", {"query": "x", "group_id": MATHS})) == "not_member"
    assert code(await dan.call("search_messages", {"query": "x", "group_id": NOWHERE})) == "group_not_found"
    assert (await dan.call("search_messages", {"query": "x"})) == {"ok": True, "results": [], "has_more": False}
    assert (await dan.call("search_messages", {"query": "x" * 200}))["ok"] is True  # 200 code points are fine
    headers = {"Authorization": f"Bearer {make_token(DAN)}"}
    async with aiohttp.ClientSession() as http:
        for params, status, name in [
            ({}, 400, "q"), ({"q": ""}, 400, "q"), ({"q": "a", "limit": "x"}, 400, "limit"),
            ({"q": "a", "before_seq": ""}, 400, "before_seq"), ({"q": "a", "group_id": MATHS}, 403, "not_member"),
            ({"q": "a", "group_id": NOWHERE}, 404, "group_not_found"),
        ]:
            async with http.get(f"{server_url}/search", params=params, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == status, (params, body)
                assert name in body["error"]["details"] if status == 400 else body["error"]["code"] == name, body
        async with http.get(f"{server_url}/search", params={"q": "a"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


@pytest.fixture
def settings():
    # A small bucket, so that a flood is cut short quickly.
    return make_settings(rate_limits=RateLimits(other=Bucket(20.0, 40)))


@pytest.mark.parametrize("backend", ["memory"])
async def test_a_search_flood_is_rate_limited_and_a_bystander_is_not_slowed(connect, store):
    for i in range(300):
        store.seed_message(MATHS, sender_id=BEN, sender_name="Ben", content=f"repaso {i} de derivadas e integrales")
    ana, ben = await connect(ANA), await connect(BEN)
    flood = [ana.call("search_messages", {"query": "derivadas integ", "limit": 100}) for _ in range(200)]
    started = time.perf_counter()
    answers, bystander = await asyncio.gather(asyncio.gather(*flood), send(ben, "sigo aquí"))
    waited = time.perf_counter() - started
    codes = [a["ok"] or a["error"]["code"] for a in answers]
    assert codes.count(True) <= 60 and codes.count("rate_limited") >= 140, codes
    assert all(a["error"]["retry_after_ms"] > 0 for a in answers if a["ok"] is False)
    assert bystander["content"] == "sigo aquí" and waited < 5, waited
