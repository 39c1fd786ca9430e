"""What a ``join_group`` reads from MongoDB: the group's top ``seq`` once, and a latest
page that never holds a message above the ``latest_seq`` it reports.

Against SecantusDB (or ``MONGODB_URI``), through the chat's own rules
(``ChatService.join_page`` and ``read_state``, as the ``join_group`` event calls them),
with the commands seen through pymongo's command monitoring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import monitoring

from handlers.chat import ChatService
from storage.mongo import MongoStore
from tests.support.mongo import seed_mongo

ANA = "65aaaaaaaaaaaaaaaaaaaa01"
READER = "65cccccccccccccccccccc03"
GROUP = "65f0000000000000000000a2"
MESSAGES = 120


class _Finds(monitoring.CommandListener):
    """The ``find`` commands sent to one database while ``recording``."""

    def __init__(self) -> None:
        self.database = ""
        self.recording = False
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.database_name == self.database and event.command_name == "find":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


FINDS = _Finds()
monitoring.register(FINDS)  # pymongo keeps listeners for good: one for the module


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


def _top_seq_probes(commands: list[dict[str, Any]]) -> int:
    """The reads of the group's top ``seq``: the counter's range and point probes."""
    def probe(command: dict[str, Any]) -> bool:
        seq = command.get("filter", {}).get("seq")
        return command.get("find") == "messages" and seq is not None and command.get("limit") == 1
    return sum(1 for c in commands if probe(c))


@pytest.mark.parametrize("since", [{}, {"since_seq": 100}], ids=["latest page", "since_seq"])
async def test_a_join_reads_the_groups_top_seq_once(store: MongoStore, mongo_db_name: str,
                                                    since: dict[str, int]) -> None:
    service = ChatService(store)
    await service.join_page(GROUP, {"limit": 50})  # this process learns where the top is
    FINDS.database, FINDS.commands = mongo_db_name, []
    FINDS.recording = True
    try:
        page = await service.join_page(GROUP, {"limit": 50, **since})
        read = await service.read_state(READER, GROUP, page)
    finally:
        FINDS.recording = False
    assert page["latest_seq"] == MESSAGES and read.unread_count == MESSAGES
    assert [m["seq"] for m in page["messages"]] == list(range(since.get("since_seq", MESSAGES - 50) + 1,
                                                            MESSAGES + 1))
    assert _top_seq_probes(FINDS.commands) == 1, FINDS.commands


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
