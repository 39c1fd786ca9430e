"""Mentions and the webhooks they cause, on one server with each store: a real
receiver, real Socket.IO clients, signatures checked with ``standardwebhooks``.
Several nodes, and nodes killed mid-delivery: ``test_webhooks_cluster.py``."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from server.config import ConfigError, Settings
from server.keys import WEBHOOKS
from tests.support.chat import ANA, BEN, CAROL, DAN, EVE, MATHS, NOWHERE, PHYSICS, make_settings
from tests.support.chat import both_stores as backend  # every test on both stores
from tests.support.webhooks import WEBHOOK_SECRET, Receiver, receiver


@pytest.fixture
def settings(receiver):
    return make_settings(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, webhook_timeout_s=3.0)


async def metric(server_url: str, name: str, outcome: str | None = None) -> float:
    async with aiohttp.ClientSession() as http, http.get(server_url + "/metrics") as resp:
        text = await resp.text()
    labels = "" if outcome is None else f'{{outcome="{outcome}"}}'
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.M)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


async def wait_metric(server_url: str, name: str, at_least: float, outcome: str | None = None) -> None:
    for _ in range(200):
        if await metric(server_url, name, outcome) >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} {outcome} stayed below {at_least}")


async def wait_metric_at_most(server_url: str, name: str, at_most: float) -> None:
    """Gauges are read from storage at most once a second: wait for a fresh reading."""
    for _ in range(100):
        if await metric(server_url, name) <= at_most:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed above {at_most}")


async def joined(connect, user):
    client = await connect(user)
    assert (await client.call("join_group", {"group_id": MATHS}))["ok"]
    return client


async def send(client, content, mentions, **extra):
    ack = await client.call("send_message", {"group_id": MATHS, "content": content, "mentions": mentions, **extra})
    assert ack["ok"], ack
    return ack["message"]


# -- mentions on the message object --


async def test_mentions_are_stored_broadcast_and_read_back(connect):
    ana, carol = await joined(connect, ANA), await joined(connect, CAROL)
    message = await send(ana, "hola @ben @carol", [BEN.upper(), CAROL])
    assert message["mentions"] == [BEN, CAROL]  # lowercase, in the order given
    plain = await send(ana, "no one", None)
    assert plain["mentions"] == []
    assert (await carol.wait_event("message", 2)) == [message, plain]
    history = await carol.call("get_history", {"group_id": MATHS})
    assert [m["mentions"] for m in history["messages"]] == [[BEN, CAROL], []]
    edited = await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "edited"})
    assert edited["message"]["mentions"] == [BEN, CAROL]


async def test_mentions_must_be_distinct_members_at_most_50(connect):
    ana = await connect(ANA)
    cases = [
        (MATHS, [DAN, BEN, EVE], [DAN, EVE]),  # non-members, named in the order given
        (PHYSICS, [CAROL, BEN.upper()], [BEN]),
        (MATHS, [f"{i:024x}" for i in range(1, 51)], [f"{i:024x}" for i in range(1, 51)]),  # 50: only membership
    ]
    for group, mentions, named in cases:
        ack = await ana.call("send_message", {"group_id": group, "content": "x", "mentions": mentions})
        assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
        (text,) = ack["error"]["details"]["mentions"]
        assert re.findall(r"[0-9a-f]{24}", text) == named
    for mentions, expected in (
        ([f"{i:024x}" for i in range(51)], "At most 50"),
        ([BEN, CAROL, BEN.upper()], BEN),
        ([BEN, 7], "not 24-character"),
        ("65a000000000000000000002", "list"),
    ):
        ack = await ana.call("send_message", {"group_id": MATHS, "content": "x", "mentions": mentions})
        assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
        assert expected in ack["error"]["details"]["mentions"][0], ack
    # The group's own refusals come first, and tell nothing about its members.
    dan = await connect(DAN)
    ack = await dan.call("send_message", {"group_id": MATHS, "content": "x", "mentions": [EVE]})
    assert ack["error"]["code"] == "not_member"
    ack = await ana.call("send_message", {"group_id": NOWHERE, "content": "x", "mentions": [EVE]})
    assert ack["error"]["code"] == "group_not_found"
    assert (await ana.call("get_history", {"group_id": MATHS}))["messages"] == []


# -- webhooks --


async def test_a_mention_of_someone_not_in_the_room_is_posted_signed(connect, receiver, server_url):
    ana = await joined(connect, ANA)
    await joined(connect, CAROL)
    ben = await connect(BEN)  # connected, but not in the group's room
    message = await send(ana, "@ana @ben @carol look", [ANA, BEN, CAROL])
    (delivery,) = await receiver.wait_for(lambda: receiver.deliveries)
    payload = delivery.payload()  # raises unless the signature is valid
    assert delivery.headers["webhook-id"] == f"mention_{message['id']}_{BEN}"
    assert delivery.headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]+=*", delivery.headers["webhook-signature"])
    assert payload["type"] == "chat.mention" and payload["timestamp"].endswith("Z")
    assert payload["data"] == {"user_id": BEN, "group_id": MATHS, "group_name": "Maths", "message": message}
    await wait_metric(server_url, "chat_webhook_events_total", 1, "delivered")
    # Carol was in the room and Ana sent it: nothing for them, ever.
    await asyncio.sleep(0.5)
    assert len(receiver.deliveries) == 1
    assert ben.events("message") == []


async def test_retries_backoff_retry_after_and_other_4xx(connect, receiver, server_url):
    ana = await joined(connect, ANA)
    plans = ["plan:500,500,200", "plan:429s4,200", "plan:429d5,200", "plan:404", "plan:200"]
    ids = {plan: f"mention_{(await send(ana, plan, [BEN]))['id']}_{BEN}" for plan in plans}
    wanted = {plans[0]: 3, plans[1]: 2, plans[2]: 2, plans[3]: 1, plans[4]: 1}

    def done():
        got = receiver.by_id()
        return all(len(got.get(ids[p], [])) == n and got[ids[p]][-1].status is not None for p, n in wanted.items())

    await receiver.wait_for(done, timeout=30)
    got = receiver.by_id()
    for plan in wanted:
        bodies = {d.body for d in got[ids[plan]]}
        assert len(bodies) == 1, plan  # the same event, byte for byte, on every attempt
        for d in got[ids[plan]]:
            assert d.payload()["data"]["message"]["content"] == plan
    failing = got[ids[plans[0]]]
    first_gap, second_gap = failing[1].at - failing[0].at, failing[2].at - failing[1].at
    assert 1.0 <= first_gap <= 10, first_gap  # the first retry within 10 s
    assert second_gap > first_gap, (first_gap, second_gap)  # then backing off
    seconds, date = got[ids[plans[1]]], got[ids[plans[2]]]
    assert seconds[1].at - seconds[0].at >= 3.9  # Retry-After: 4 (backoff alone is at most 2.5 s)
    assert date[1].at - date[0].at >= 3.5  # an HTTP date 5 s ahead, to the second
    assert [d.status for d in got[ids[plans[3]]]] == [404]  # not retried
    await wait_metric(server_url, "chat_webhook_events_total", 1, "failed")  # counted after the receiver answered
    assert await metric(server_url, "chat_webhook_events_total", "delivered") == 4
    assert await metric(server_url, "chat_webhook_events_total", "retried") == 4
    assert await metric(server_url, "chat_webhook_events_total", "failed") == 1
    await wait_metric_at_most(server_url, "chat_webhook_outbox_depth", 0)
    assert await metric(server_url, "chat_webhook_outbox_depth") == 0


async def test_events_wait_in_the_outbox_while_the_receiver_is_down(connect, receiver, server_url):
    await receiver.stop()  # the port is closed
    ana = await joined(connect, ANA)
    message = await send(ana, "are you there?", [BEN, CAROL])
    # Written before the ack: both are in the outbox now.
    await asyncio.sleep(1.0)  # /metrics reads the outbox at most once a second
    assert await metric(server_url, "chat_webhook_outbox_depth") == 2
    await wait_metric(server_url, "chat_webhook_events_total", 2, "retried")
    assert await metric(server_url, "chat_webhook_outbox_oldest_age_seconds") > 0
    await receiver.start()
    await receiver.wait_for(lambda: len(receiver.deliveries) == 2, timeout=15)
    assert sorted(d.payload()["data"]["user_id"] for d in receiver.deliveries) == [BEN, CAROL]
    assert {d.payload()["data"]["message"]["id"] for d in receiver.deliveries} == {message["id"]}
    await wait_metric(server_url, "chat_webhook_events_total", 2, "delivered")


async def test_a_resent_send_writes_what_the_first_did_not(connect, receiver, store):
    """A node that stored a send and died before its outbox write: the client's
    retry with the same client_msg_id writes it; later retries write nothing."""
    stored, duplicate = await store.add_message(
        MATHS, sender_id=ANA, sender_name="Ana García", content="hi @ben", client_msg_id="c-1", mentions=[BEN]
    )
    assert not duplicate
    await asyncio.sleep(0.3)
    assert receiver.deliveries == []
    ana = await connect(ANA)
    for _ in range(2):
        ack = await ana.call("send_message", {"group_id": MATHS, "content": "hi @ben", "client_msg_id": "c-1",
                                              "mentions": [BEN]})
        assert ack["ok"] and ack["duplicate"] and ack["message"] == stored
        (delivery,) = await receiver.wait_for(lambda: receiver.deliveries)
        assert delivery.payload()["data"]["message"] == stored
    await asyncio.sleep(0.5)
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize("settings", [make_settings()], ids=["no-webhook-settings"])
async def test_no_webhooks_without_url_and_secret(connect, receiver, server):
    assert WEBHOOKS not in server.app
    ana = await connect(ANA)
    message = await send(ana, "@ben", [BEN])
    assert message["mentions"] == [BEN]
    await asyncio.sleep(0.5)
    assert receiver.deliveries == []


def test_webhook_settings_come_together_and_are_checked():
    base = {"MONGODB_URI": "memory://", "JWT_SECRET": "x" * 48}
    s = Settings.from_env({**base, "WEBHOOK_URL": "https://platform.example/hooks", "WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert s.webhooks and (s.webhook_max_age_s, s.webhook_timeout_s) == (86400, 10)
    assert WEBHOOK_SECRET not in repr(s) and "platform.example" not in repr(s)
    assert not Settings.from_env(base).webhooks
    for env, named in (
        ({"WEBHOOK_URL": "https://platform.example/hooks"}, "WEBHOOK_SECRET is required"),
        ({"WEBHOOK_SECRET": WEBHOOK_SECRET}, "WEBHOOK_URL is required"),
        ({"WEBHOOK_URL": "platform.example", "WEBHOOK_SECRET": WEBHOOK_SECRET}, "WEBHOOK_URL must be"),
        ({"WEBHOOK_URL": "http://h/", "WEBHOOK_SECRET": "whsec_x"}, "WEBHOOK_SECRET must be"),
        ({"WEBHOOK_URL": "http://h/", "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_MAX_AGE_S": "0"}, "WEBHOOK_MAX_AGE_S"),
        ({"WEBHOOK_URL": "http://h/", "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_TIMEOUT_S": "x"}, "WEBHOOK_TIMEOUT_S"),
    ):
        with pytest.raises(ConfigError, match=named):
            Settings.from_env({**base, **env})
