"""How ChatService writes sends to one group: a lone send at once, sends that arrive
during a write together in the next one, each answered once stored and published,
and no sender held back by sends that came after its own. On a store that writes
without waiting (the embedded one), a lone send is written by its caller, and what
arrives while it is published still follows it in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from handlers.chat import ChatService
from storage.base import Message, NewMessage, StorageUnavailable
from storage.memory import MemoryStore

GROUP = "65f0000000000000000000a1"
USERS = [f"65a00000000000000000000{i}" for i in range(1, 8)]


class GatedStore(MemoryStore):
    """Each write waits until the test lets it through (as a database's would)."""

    add_message_at_once = None  # type: ignore[assignment]  # every write goes through add_messages

    def __init__(self) -> None:
        super().__init__()
        self.add_group(GROUP, "Maths", USERS)
        self.writes: list[list[str]] = []  # contents of each add_messages call
        self.gates: list[asyncio.Event] = []
        self.fail_next = False

    async def add_messages(
        self, group_id: str, sends: Sequence[NewMessage]
    ) -> list[tuple[Message, bool] | StorageUnavailable]:
        self.writes.append([s["content"] for s in sends])
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StorageUnavailable("down")
        return await super().add_messages(group_id, sends)


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _sender(service: ChatService, published: list[int]) -> Any:
    async def publish(message: Message) -> None:
        published.append(message["seq"])

    async def send(user: str, content: str) -> tuple[Message, bool]:
        return await service.send(user, GROUP, name=user, content=content, client_msg_id=content, publish=publish)

    return send


async def test_sends_during_a_write_go_together_in_the_next_and_the_first_is_not_held_back() -> None:
    store = GatedStore()
    published: list[int] = []
    send = _sender(ChatService(store), published)
    first = asyncio.create_task(send(USERS[0], "a"))
    await _settle()
    later = [asyncio.create_task(send(USERS[i], c)) for i, c in enumerate("bcdef", start=1)]
    await _settle()
    assert store.writes == [["a"]]  # the lone send was written at once; the others wait
    store.gates[0].set()
    message, duplicate = await first
    assert (message["seq"], duplicate) == (1, False)
    await _settle()
    assert store.writes == [["a"], ["b", "c", "d", "e", "f"]]
    assert not any(task.done() for task in later)  # answered only once stored
    store.gates[1].set()
    answers = await asyncio.gather(*later)
    assert [m["seq"] for m, _ in answers] == [2, 3, 4, 5, 6]
    assert published == [1, 2, 3, 4, 5, 6]
    # Idle again: the next send is written at once, alone.
    nxt = asyncio.create_task(send(USERS[6], "g"))
    await _settle()
    assert store.writes[-1] == ["g"]
    store.gates[2].set()
    assert (await nxt)[0]["seq"] == 7


async def test_a_failed_write_fails_its_sends_only_and_repeats_are_not_published_again() -> None:
    store = GatedStore()
    published: list[int] = []
    send = _sender(ChatService(store), published)
    first = asyncio.create_task(send(USERS[0], "a"))
    await _settle()
    batch = [asyncio.create_task(send(USERS[1], "b")), asyncio.create_task(send(USERS[0], "a"))]
    await _settle()
    store.gates[0].set()
    await first
    await _settle()
    store.fail_next = True
    store.gates[1].set()
    for task in batch:
        try:
            await task
        except StorageUnavailable:
            continue
        raise AssertionError("the failed write's sends must fail")
    # Sent again (a client's retry): "b" is stored now, "a" is the first one again.
    retry = [asyncio.create_task(send(USERS[1], "b")), asyncio.create_task(send(USERS[0], "a"))]
    await _settle()
    store.gates[2].set()
    await _settle()
    if len(store.gates) > 3:
        store.gates[3].set()
    answers = await asyncio.gather(*retry)
    assert [(m["seq"], dup) for m, dup in answers] == [(2, False), (1, True)]
    assert published == [1, 2]


class CountedStore(MemoryStore):
    """The embedded store, recording each batch write (``add_messages``) it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.add_group(GROUP, "Maths", USERS)
        self.writes: list[list[str]] = []

    async def add_messages(
        self, group_id: str, sends: Sequence[NewMessage]
    ) -> list[tuple[Message, bool] | StorageUnavailable]:
        self.writes.append([s["content"] for s in sends])
        return await super().add_messages(group_id, sends)


async def test_on_a_store_that_writes_at_once_sends_and_edits_during_a_publish_follow_it_in_order() -> None:
    store = CountedStore()
    service = ChatService(store)
    published: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def publish(message: Message) -> None:
        if message["seq"] == 1:
            await gate.wait()  # a broadcast that waits (a Redis publish, say)
        published.append((message["content"], message["rev"]))

    async def send(user: str, content: str) -> tuple[Message, bool]:
        return await service.send(user, GROUP, name=user, content=content, client_msg_id=content, publish=publish)

    first = asyncio.create_task(send(USERS[0], "a"))
    await _settle()
    assert [m["content"] for m in (await store.get_messages(GROUP, limit=10))[0]] == ["a"]  # stored, not yet out
    later = [asyncio.create_task(send(USERS[i], c)) for i, c in enumerate("bc", start=1)]
    edit = asyncio.create_task(service.edit(USERS[0], GROUP, (await first_message(store))["id"], "a2",
                                            publish=publish))
    again = asyncio.create_task(send(USERS[0], "a"))  # a retry while the first is published
    await _settle()
    assert published == [] and not any(t.done() for t in (first, *later, edit))
    gate.set()
    message, duplicate = await first
    assert (message["seq"], duplicate) == (1, False)
    answers = await asyncio.gather(*later)
    assert [(m["seq"], dup) for m, dup in answers] == [(2, False), (3, False)]
    assert (await edit)["content"] == "a2"
    retried, duplicate = await again
    assert (retried["seq"], duplicate) == (1, True)
    # Published once each, in rev order (the edit took the writer first, as it does on any store).
    assert [c for c, _ in published] == ["a", "a2", "b", "c"]
    assert [r for _, r in published] == [1, 2, 3, 4]
    # The lone first send was written on the spot; what queued behind it, in one batch.
    assert store.writes == [["b", "c", "a"]]
    assert service._queued == {} and len(service._writer) == 0  # nothing left behind


async def first_message(store: MemoryStore) -> Message:
    messages, _ = await store.get_messages(GROUP, limit=1, after_seq=0)
    return messages[0]
