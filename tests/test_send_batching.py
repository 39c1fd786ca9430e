"""Sends to one group that arrive together: stored in one write, each acked once stored, in order;
and what a join reads.

Through a real server on the MongoDB store (SecantusDB, or ``MONGODB_URI``) with python-socketio
clients; the database commands are counted with pymongo's command monitoring (the server runs
in this process, so its driver reports to the listener registered here).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from tests.support.chat import ANA, BEN, CAROL, MATHS

SENDS_EACH = 15


class _Commands(monitoring.CommandListener):
    """(command name, collection) of every command sent to one database."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: Counter[tuple[str, str]] = Counter()
        self.filters: list[dict[str, Any]] = []  # of every find

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.seen[(event.command_name, str(event.command.get(event.command_name)))] += 1
            if event.command_name == "find":
                self.filters.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_LISTENERS: list[_Commands] = []


class _Dispatch(monitoring.CommandListener):
    """Registered once per process (pymongo keeps listeners for good): forwards to the test's own."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        for listener in _LISTENERS:
            listener.started(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


monitoring.register(_Dispatch())


@pytest.fixture
def backend() -> str:
    return "mongo"


@pytest.fixture
def commands(mongo_db_name: str) -> Iterator[_Commands]:
    listener = _Commands(mongo_db_name)
    _LISTENERS.append(listener)
    yield listener
    _LISTENERS.remove(listener)


async def test_sends_arriving_together_are_written_together_and_acked_in_order(connect: Any, commands: _Commands) -> None:
    """45 sends from three members at once: seq 2..46 exactly, every member gets all in
    order, and the store wrote them in fewer inserts than sends with no read of messages."""
    clients = [await connect(user) for user in (ANA, BEN, CAROL)]
    for client in clients:
        assert (await client.call("join_group", {"group_id": MATHS}))["ok"] is True
    # The process learns the group's top from its first send here; from then on it knows it.
    first = await clients[0].call("send_message", {"group_id": MATHS, "content": "first"})
    assert first["message"]["seq"] == 1
    commands.seen.clear()
    commands.filters.clear()

    async def send(client: Any, n: int) -> dict[str, Any]:
        return await client.call("send_message", {"group_id": MATHS, "content": f"{client.user_id[-1]}-{n}",
                                                  "client_msg_id": f"c-{n}"})

    acks = await asyncio.gather(*(send(c, n) for n in range(SENDS_EACH) for c in clients))
    total = SENDS_EACH * len(clients)
    assert all(a["ok"] and a["duplicate"] is False for a in acks), acks
    assert sorted(a["message"]["seq"] for a in acks) == list(range(2, total + 2))
    for client in clients:
        got = await client.wait_event("message", total + 1)
        assert [m["seq"] for m in got] == list(range(1, total + 2))
    # Each send stored once, with its own content (a send's place in the batch is its own).
    for ack in acks:
        assert ack["message"]["content"].startswith(f"{ack['message']['sender_id'][-1]}-")
    assert len({a["message"]["content"] for a in acks}) == total
    inserts = commands.seen[("insert", "messages")]
    assert 1 <= inserts < total, commands.seen
    # Membership is checked for every send, but checks that overlap share one read.
    membership_reads = commands.seen[("find", "study_groups")] + commands.seen[("aggregate", "study_groups")]
    assert 1 <= membership_reads < total, commands.seen
    # No read of the group's top or of an earlier send with the same client_msg_id before
    # the insert (what else reads messages meanwhile is the server's start-up work).
    assert not [f for f in commands.filters if "client_msg_id" in f or "seq" in f], commands.filters

    # Sent again at once (a reconnect's resend): each one is the first stored, and nothing is broadcast.
    again = await asyncio.gather(*(send(c, n) for n in range(3) for c in clients))
    assert all(a["duplicate"] is True for a in again)
    by_id = {a["message"]["id"]: a["message"]["seq"] for a in acks}
    assert all(by_id[a["message"]["id"]] == a["message"]["seq"] for a in again)
    for client in clients:
        await client.settle()
        assert len(client.events("message")) == total + 1


async def test_a_check_waiting_for_a_shared_read_sees_a_removal_made_before_it(
    connect: Any, mongo_uri: str, mongo_db_name: str
) -> None:
    """Sends keep the group's membership reads busy; the platform removes Ben; Ben's send,
    made after the removal was written, is refused: no check is answered by an older read."""
    ana, ben = await connect(ANA), await connect(BEN)
    for client in (ana, ben):
        assert (await client.call("join_group", {"group_id": MATHS}))["ok"] is True
    busy = [asyncio.create_task(ana.call("send_message", {"group_id": MATHS, "content": f"busy {n}"}))
            for n in range(30)]
    await asyncio.sleep(0)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        await client[mongo_db_name].study_groups.update_one({"_id": ObjectId(MATHS)},
                                                           {"$pull": {"members": ObjectId(BEN)}})
    finally:
        await client.close()
    refused = await ben.call("send_message", {"group_id": MATHS, "content": "after removal"})
    assert refused["ok"] is False and refused["error"]["code"] == "not_member", refused
    assert all(ack["ok"] for ack in await asyncio.gather(*busy))


async def test_a_join_reads_the_group_top_once(connect: Any, commands: _Commands) -> None:
    """``join_group`` counts unread messages and open questions as of the top ``seq`` and
    ``rev`` its page has just read: it does not read them again for each count."""
    ana, ben = await connect(ANA), await connect(BEN)
    assert (await ana.call("join_group", {"group_id": MATHS}))["ok"] is True
    for n in range(3):
        await ana.call("send_message", {"group_id": MATHS, "content": f"m{n}"})
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"] is True  # counted once here
    await ana.call("delete_message", {"group_id": MATHS, "message_id": (await ana.call(
        "send_message", {"group_id": MATHS, "content": "gone"}))["message"]["id"]})
    commands.seen.clear()
    commands.filters.clear()
    joined = await ben.call("join_group", {"group_id": MATHS})
    assert joined["ok"] is True and joined["unread_count"] == 3 and joined["latest_seq"] == 4
    # Reads of messages: the top rev, the top seq, the page (up to that seq), the deleted
    # messages that changed since this process counted (one catch-up), and two counts (own
    # unread messages, mentions). Neither the page nor the counts reread a top (the page
    # read the top seq again before: 7 reads).
    reads = commands.seen[("find", "messages")] + commands.seen[("aggregate", "messages")]
    rev_reads = [f for f in commands.filters if "revs" in f]
    assert reads <= 6 and len(rev_reads) <= 2, (commands.seen, commands.filters)
