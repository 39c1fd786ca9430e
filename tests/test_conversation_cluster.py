"""Conversation changes across real server processes sharing Redis and MongoDB:
reactions, pins and answers made on several nodes at once reach every node's
members in ``rev`` order, and the stored state is what the acks said."""

from __future__ import annotations

import asyncio

from tests.support.chat import ANA, BEN, CAROL, MATHS
from tests.test_multinode import seeded_db, start_nodes

EMOJI = ["👍", "🎉", "🤔", "👨‍👩‍👧", "🇪🇸"]


async def test_reactions_pins_and_answers_from_three_nodes_reach_everyone_in_rev_order(start_nodes, clients):
    nodes = start_nodes(3)
    users = (ANA, BEN, CAROL)
    members = [await clients(node, user) for node, user in zip(nodes, users)]
    for client in members:
        assert (await client.call("join_group", {"group_id": MATHS}))["ok"]
    ana, ben, carol = members
    asked = (await ana.call("send_message", {"group_id": MATHS, "content": "¿Integral de 1/x?",
                                             "kind": "question"}))["message"]
    answer = (await ben.call("send_message", {"group_id": MATHS, "content": "ln|x| + C",
                                              "reply_to": asked["id"]}))["message"]
    assert answer["reply_to"]["id"] == asked["id"]

    async def react(client, i: int):
        target = (asked, answer)[i % 2]["id"]
        return await client.call("react", {"group_id": MATHS, "message_id": target,
                                           "emoji": EMOJI[i % len(EMOJI)], "on": True})

    acks = await asyncio.gather(
        *(react(client, i) for i in range(10) for client in members),
        ben.call("pin_message", {"group_id": MATHS, "message_id": asked["id"], "pinned": True}),
        ana.call("accept_answer", {"group_id": MATHS, "question_id": asked["id"], "answer_id": answer["id"]}),
    )
    assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]]
    latest = (await ana.call("get_changes", {"group_id": MATHS, "after_rev": 0}))["latest_rev"]
    # 2 messages, 3 users x 10 distinct (message, emoji) pairs each, 1 pin, 1 acceptance.
    assert latest == 2 + 3 * 10 + 1 + 1
    for client in members:
        await client.wait_for(lambda c=client: any(m["rev"] == latest for m in c.events("message_updated")))
        revs = [m["rev"] for m in client.events("message_updated")]
        assert revs == list(range(3, latest + 1)), revs
    final = {m["id"]: m for m in (await carol.call("get_history", {"group_id": MATHS}))["messages"]}
    question = final[asked["id"]]
    assert question["answer_id"] == answer["id"] and question["pinned"]["by"] == BEN
    reactions = [r for m in final.values() for r in m["reactions"]]
    assert sum(r["count"] for r in reactions) == 30 and {r["emoji"] for r in reactions} == set(EMOJI)
    assert (await ben.call("list_groups"))["groups"][0]["open_questions"] == 0
