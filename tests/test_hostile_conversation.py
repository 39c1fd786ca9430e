"""A hostile member against the conversation events, measured like ``tests/test_hostile.py``:
the server process's memory and descriptors, and the latency of a member (Ben) who keeps
sending in the same group throughout.

The attacker is a member of the group (Carol): the new events are open to members, so
their refusals and the per-user rate limit are all that stand between one user and the
room. Every answer must be the documented one; what the attacker can make the server keep
is bounded by the protocol's limits (20 emoji a message, 50 pins a group).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest
import socketio

from tests.support.chat import CAROL, MATHS, make_token
from tests.support.probes import hostile_node
from tests.test_hostile import BASE_ENV, MIN_ATTACK_S, NodeFactory, for_at_least, under_attack, verdict

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

EMOJI = ["👍", "👍🏽", "🎉", "🤔", "👨‍👩‍👧", "🇪🇸", "#️⃣", "😀", "😃", "😄",
         "😁", "😆", "😅", "🤣", "😂", "🙂", "🙃", "😉", "😊", "😇", "🥰", "😍"]  # 22: two over the limit


async def test_a_member_flooding_reactions_pins_and_filters_holds_no_one_up(hostile_node: NodeFactory) -> None:
    """Carol sends rounds of 60 conversation calls at once for at least two seconds:
    reactions (valid, too many emoji, a 24 KB "emoji"), pins, acceptances of a message
    that is no question, and filtered histories. Each answer is ok or the documented
    refusal; Ben's sends stay fast and the server's memory and descriptors come back."""
    node = hostile_node({**BASE_ENV, "RATE_LIMIT_EVENTS_PER_S": "200", "RATE_LIMIT_EVENTS_BURST": "400"})
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(node.url, auth={"token": make_token(CAROL)}, transports=["websocket"], wait_timeout=10)
    ids: list[str] = []
    for i in range(3):
        ack = await sio.call("send_message", {"group_id": MATHS, "content": f"target {i}"}, timeout=10)
        ids.append(ack["message"]["id"])
    turn = 0

    def calls() -> list[tuple[str, str, dict[str, Any]]]:
        nonlocal turn
        turn += 1
        out: list[tuple[str, str, dict[str, Any]]] = []
        for i in range(10):
            target = ids[(turn + i) % 3]
            emoji = EMOJI[(turn * 10 + i) % len(EMOJI)]
            out += [
                ("react", "react", {"group_id": MATHS, "message_id": ids[0], "emoji": emoji, "on": True}),
                ("huge emoji", "react", {"group_id": MATHS, "message_id": target, "emoji": "👍" * 2000, "on": True}),
                ("pin", "pin_message", {"group_id": MATHS, "message_id": target, "pinned": i % 2 == 0}),
                ("accept", "accept_answer", {"group_id": MATHS, "question_id": target, "answer_id": None}),
                ("filter", "get_history", {"group_id": MATHS, "filter": ("pinned", "mentions", "unanswered")[i % 3]}),
                ("bad filter", "get_history", {"group_id": MATHS, "filter": {"$ne": None}}),
            ]
        return out

    async def one(kind: str, event: str, data: dict[str, Any]) -> str:
        try:
            ack = await sio.call(event, data, timeout=5)
        except socketio.exceptions.TimeoutError:
            return f"{kind}: no answer"
        if ack.get("ok"):
            return f"{kind}: ok"
        code = ack["error"]["code"]
        if kind == "react" and code == "invalid_payload" and "emoji" in ack["error"].get("details", {}):
            return f"{kind}: too many emoji"
        return f"{kind}: {code}"

    async def one_round() -> Counter[str]:
        return Counter(await asyncio.gather(*(one(*call) for call in calls())))

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        return await for_at_least(MIN_ATTACK_S, one_round)

    try:
        outcome, readings, _ = await under_attack(node, attack)
    finally:
        await sio.disconnect()
    allowed = {
        "react": {"ok", "too many emoji", "rate_limited"},
        "huge emoji": {"invalid_payload", "rate_limited"},
        "pin": {"ok", "rate_limited"},
        "accept": {"invalid_payload", "rate_limited"},
        "filter": {"ok", "rate_limited"},
        "bad filter": {"invalid_payload", "rate_limited"},
    }
    undocumented = {k: n for k, n in outcome.items() if k.split(": ", 1)[1] not in allowed[k.split(": ", 1)[0]]}
    assert outcome[("react: ok")] > 0 and outcome["react: too many emoji"] > 0, outcome
    verdict(Counter(undocumented), {}, readings)
