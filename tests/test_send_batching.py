"""Sends to one group that arrive together: stored in one write, each acked once stored, in order.

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
from pymongo import monitoring

from tests.support.chat import ANA, BEN, CAROL, MATHS

SENDS_EACH = 15


class _Commands(monitoring.CommandListener):
    """(command name, collection) of every command sent to one database."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: Counter[tuple[str, str]] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.seen[(event.command_name, str(event.command.get(event.command_name)))] += 1

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
    """45 sends from three members at once: seq 1..45 exactly, every member gets all 45 in
    order, and the store wrote them in fewer inserts than sends with no read of messages."""
    clients = [await connect(user) for user in (ANA, BEN, CAROL)]
    for client in clients:
        assert (await client.call("join_group", {"group_id": MATHS}))["ok"] is True
    commands.seen.clear()

    async def send(client: Any, n: int) -> dict[str, Any]:
        return await client.call("send_message", {"group_id": MATHS, "content": f"{client.user_id[-1]}-{n}",
                                                  "client_msg_id": f"c-{n}"})

    acks = await asyncio.gather(*(send(c, n) for n in range(SENDS_EACH) for c in clients))
    total = SENDS_EACH * len(clients)
    assert all(a["ok"] and a["duplicate"] is False for a in acks), acks
    assert sorted(a["message"]["seq"] for a in acks) == list(range(1, total + 1))
    for client in clients:
        got = await client.wait_event("message", total)
        assert [m["seq"] for m in got] == list(range(1, total + 1))
    # A sender's own sends are stored in the order it sent them.
    for client in clients:
        own = sorted((a["message"] for a in acks if a["message"]["sender_id"] == client.user_id),
                     key=lambda m: m["seq"])
        assert [m["content"] for m in own] == [f"{client.user_id[-1]}-{n}" for n in range(SENDS_EACH)]
    inserts = commands.seen[("insert", "messages")]
    assert 1 <= inserts < total, commands.seen
    assert commands.seen[("find", "messages")] == 0, commands.seen  # no read before the insert

    # Sent again at once (a reconnect's resend): each one is the first stored, and nothing is broadcast.
    again = await asyncio.gather(*(send(c, n) for n in range(3) for c in clients))
    assert all(a["duplicate"] is True for a in again)
    by_id = {a["message"]["id"]: a["message"]["seq"] for a in acks}
    assert all(by_id[a["message"]["id"]] == a["message"]["seq"] for a in again)
    for client in clients:
        await client.settle()
        assert len(client.events("message")) == total
