"""A ``join_group``'s latest page never holds a message above the ``latest_seq`` it reports,
now that the page ends at the top read for it (the reads a join makes are counted in
``tests/test_send_batching.py``).

Against SecantusDB (or ``MONGODB_URI``), through the chat's own rules (``ChatService.join_page``,
as the ``join_group`` event calls it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from handlers.chat import ChatService
from storage.mongo import MongoStore
from tests.support.mongo import seed_mongo

ANA = "65aaaaaaaaaaaaaaaaaaaa01"
READER = "65cccccccccccccccccccc03"
GROUP = "65f0000000000000000000a2"
MESSAGES = 120


@pytest.fixture
async def store(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[MongoStore]:
    await seed_mongo(mongo_uri, mongo_db_name, [(ANA, "Ana", None), (READER, "Rui", None)],
                     [(GROUP, "Optics", [ANA, READER])])
    store = MongoStore(mongo_uri, mongo_db_name)
    await store.open()
    try:
        sends = [{"sender_id": ANA, "sender_name": "Ana", "content": f"m{i}", "client_msg_id": None}
                 for i in range(MESSAGES)]
        for answer in await store.add_messages(GROUP, sends):  # type: ignore[arg-type]
            assert not isinstance(answer, BaseException), answer
        yield store
    finally:
        await store.close()


async def test_the_latest_page_never_reaches_above_the_latest_seq_it_reports(store: MongoStore) -> None:
    """A message stored while a join reads is either in the page and at or below
    ``latest_seq``, or in neither (the member gets it live)."""
    service = ChatService(store)
    page = await service.join_page(GROUP, {"limit": 50})
    original = store.latest_seq

    async def top_then_a_send(group_id: str) -> int:
        top = await original(group_id)
        await store.add_messages(GROUP, [{"sender_id": ANA, "sender_name": "Ana", "content": "late",  # type: ignore[list-item]
                                          "client_msg_id": None}])
        return top

    store.latest_seq = top_then_a_send  # type: ignore[method-assign]
    try:
        page = await service.join_page(GROUP, {"limit": 50})
    finally:
        store.latest_seq = original  # type: ignore[method-assign]
    assert max(m["seq"] for m in page["messages"]) <= page["latest_seq"]
