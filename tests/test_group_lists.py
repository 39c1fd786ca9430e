"""``list_groups`` reads every group of the caller: what many at once, and many in a row, cost.

Calls of one user that overlap share one store read, which began after each of them was asked
(so an answer never predates what the caller did before asking); and a list costs the per-user
limit for events other than sends one token plus one per two groups of the user's last list,
on the socket and on ``GET /study-groups`` alike, and at most a tenth of the bucket (so does a
search of all the user's groups).

A real server and python-socketio clients; the embedded store, wrapped to count its list reads
and to answer them late, like a database under load.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from cluster.rate_limits import Bucket, RateLimits
from storage.base import GroupSummary
from storage.memory import MemoryStore
from tests.support.chat import ANA, BEN, GROUPS, MATHS, USERS, make_settings, make_token

EXTRA_GROUPS = 20  # Ana's groups beyond the seeded two
MANY_GROUPS = 100  # Ben's, beyond Maths
LIST_DELAY_S = 0.3


class ListCountingStore(MemoryStore):
    """The seeded embedded store; a group list is read at once and answered ``delay`` s later."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0
        self.delay = LIST_DELAY_S
        for user_id, full_name, last_name in USERS:
            self.add_user(user_id, full_name, last_name)
        for group_id, name, members in GROUPS:
            self.add_group(group_id, name, members)

    async def list_groups(self, user_id: str) -> list[GroupSummary]:
        self.lists += 1
        answer = await super().list_groups(user_id)
        await asyncio.sleep(self.delay)
        return answer


@pytest.fixture
def store() -> ListCountingStore:
    return ListCountingStore()


@pytest.fixture
def settings():
    return make_settings(rate_limits=RateLimits(send=Bucket(20.0, 200), other=Bucket(5.0, 200)))


def unread(answer: dict[str, Any], group_id: str) -> int:
    assert answer["ok"] is True, answer
    return next(g["unread_count"] for g in answer["groups"] if g["id"] == group_id)


async def test_overlapping_lists_of_one_user_share_a_read(connect, store: ListCountingStore) -> None:
    conns = [await connect(ANA) for _ in range(10)]
    answers = await asyncio.gather(*(c.call("list_groups") for c in conns))
    assert all(a["ok"] for a in answers) and all(a == answers[0] for a in answers), answers
    assert [g["id"] for g in answers[0]["groups"]] == [g[0] for g in GROUPS]
    # One read answers the first; the nine that came while it ran share the next one.
    assert store.lists <= 2, store.lists


async def test_a_list_asked_after_a_change_is_not_answered_by_an_older_read(
    connect, store: ListCountingStore
) -> None:
    ana, ana_phone, ben = await connect(ANA), await connect(ANA), await connect(BEN)
    for n in range(3):
        assert (await ben.call("send_message", {"group_id": MATHS, "content": f"m{n}"}))["ok"]
    early = asyncio.create_task(ana.call("list_groups"))  # read now, answered LIST_DELAY_S later
    await asyncio.sleep(LIST_DELAY_S / 3)
    assert (await ana_phone.call("mark_read", {"group_id": MATHS, "seq": 3}))["ok"]
    late = await ana_phone.call("list_groups")
    assert unread(await early, MATHS) == 3
    assert unread(late, MATHS) == 0, late
    assert store.lists == 2


async def lists_until_refused(client, event: str = "list_groups", payload: Any = None,
                              most: int = 300) -> tuple[int, dict[str, Any]]:
    """``event`` in a row until one is refused: how many passed, and the refusal."""
    for passed in range(most):
        answer = await (client.call(event) if payload is None else client.call(event, payload))
        if not answer["ok"]:
            return passed, answer
    raise AssertionError(f"{most} of {event} in a row were all answered")


async def test_a_list_costs_the_rate_limit_by_the_users_groups_up_to_a_tenth_of_it(
    connect, server_url: str, store: ListCountingStore
) -> None:
    store.delay = 0
    for n in range(EXTRA_GROUPS):
        store.add_group(f"65c{n:021x}", f"Seminar {n:02}", [ANA])
    for n in range(MANY_GROUPS):
        store.add_group(f"65e{n:021x}", f"Club {n:03}", [BEN])
    ana, ben = await connect(ANA), await connect(BEN)
    # The bucket holds 200 and refills 5 a second. Ana's first list costs one token (the server
    # does not know her groups yet), the next ones 1 + 22 // 2 = 12: sixteen more pass.
    passed, refused = await lists_until_refused(ana)
    assert 16 <= passed <= 18, passed
    assert refused["error"]["code"] == "rate_limited" and refused["error"]["retry_after_ms"] >= 500, refused
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {make_token(ANA)}"}
        async with http.get(f"{server_url}/study-groups", headers=headers) as resp:
            assert resp.status == 429, await resp.text()
    # What is left covers other events.
    assert (await ana.call("join_group", {"group_id": MATHS}))["ok"] is True
    # Ben's 101 groups would cost 51; a list costs at most a tenth of the bucket (20), so a member
    # of very many groups still has tokens for everything else: nine more pass, then the rest
    # of the bucket (19) serves his other events.
    passed, refused = await lists_until_refused(ben)
    assert 9 <= passed <= 11, passed
    assert all([(await ben.call("get_history", {"group_id": MATHS}))["ok"] for _ in range(15)])


async def test_a_search_of_all_groups_costs_like_a_list_and_of_one_group_like_any_event(
    connect, server_url: str, store: ListCountingStore
) -> None:
    for n in range(EXTRA_GROUPS):
        store.add_group(f"65c{n:021x}", f"Seminar {n:02}", [ANA])
    ana = await connect(ANA)
    # A search of all her 22 groups reads each: the first costs one token (the server counts her
    # groups then), the next ones 12, as a list would. A null group_id is no group_id.
    passed, refused = await lists_until_refused(ana, "search_messages", {"query": "notes", "group_id": None})
    assert 16 <= passed <= 18, passed
    assert refused["error"]["code"] == "rate_limited", refused
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {make_token(ANA)}"}
        async with http.get(f"{server_url}/search", params={"q": "notes"}, headers=headers) as resp:
            assert resp.status == 429, await resp.text()
        # One group's search reads one group: one token, like any event.
        async with http.get(f"{server_url}/search", params={"q": "notes", "group_id": MATHS},
                            headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    assert all([(await ana.call("search_messages", {"query": "notes", "group_id": MATHS}))["ok"] for _ in range(4)])
