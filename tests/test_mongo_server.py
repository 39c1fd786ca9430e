"""The server on MongoDB as real processes: concurrent writers, crashes, outages, SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import socketio
from pymongo import MongoClient

from tests.support.chat import ANA, BEN, CAROL, GROUPS, MATHS, SECRET, USERS, ChatClient
from tests.support.mongo import SecantusProcess, seed_mongo
from tests.support.nodes import ROOT, Node


@pytest.fixture
def database(tmp_path):
    """A SecantusDB of this test's own, so the test may stop it or inject faults."""
    server = SecantusProcess(tmp_path / "db", test_commands=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def env(database):
    await seed_mongo(database.uri, "chat", users=USERS, groups=GROUPS)
    return {"MONGODB_URI": database.uri, "MONGODB_DB": "chat", "JWT_SECRET": SECRET}


@pytest.fixture
def nodes(env, node_factory):
    def _start(name: str, port: int | None = None, **extra: str) -> Node:
        return node_factory({**env, **extra}, name, port=port)

    return _start


async def history(client: ChatClient) -> list[dict]:
    messages, after = [], 0
    while True:
        page = await client.call("get_history", {"group_id": MATHS, "after_seq": after, "limit": 100})
        messages += page["messages"]
        if not page["has_more"]:
            return messages
        after = messages[-1]["seq"]


async def test_two_processes_writing_one_group_keep_seq_exact(nodes, clients):
    a, b = nodes("a"), nodes("b")
    writers = [await clients(a, ANA), await clients(b, BEN), await clients(a, CAROL), await clients(b, ANA)]

    async def burst(client, tag):
        return await asyncio.gather(*[
            client.call("send_message", {"group_id": MATHS, "content": f"{tag} {i}", "client_msg_id": f"{tag}-{i}"})
            for i in range(50)])

    acks = [ack for acks in await asyncio.gather(*[burst(c, f"w{i}") for i, c in enumerate(writers)]) for ack in acks]
    assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]][:3]
    assert sorted(ack["message"]["seq"] for ack in acks) == list(range(1, 201))
    from_a, from_b = await history(writers[0]), await history(writers[1])
    assert from_a == from_b
    assert [m["seq"] for m in from_a] == list(range(1, 201))
    assert {m["id"] for m in from_a} == {ack["message"]["id"] for ack in acks}


async def test_acked_messages_survive_sigkill(nodes, clients, env, tmp_path):
    node = nodes("a")
    ana = await clients(node, ANA)
    acked = [await ana.call("send_message", {"group_id": MATHS, "content": f"m{i}"}) for i in range(20)]
    node.kill()  # right after the acks
    restarted = Node(env, tmp_path, "a-again", port=node.port).start()
    try:
        ana2 = await clients(restarted, ANA)
        assert await history(ana2) == [a["message"] for a in acked]
    finally:
        restarted.stop()


def test_mongodb_down_at_start_names_mongodb_uri(tmp_path):
    dead = SecantusProcess(tmp_path / "never-started")
    node = Node({"MONGODB_URI": dead.uri + "&serverSelectionTimeoutMS=1000", "JWT_SECRET": SECRET}, tmp_path, "x")
    result = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, env=node.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "MONGODB_URI" in result.stderr


async def _wait_ready(node: Node, status: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while node.status("/readyz") != status:
        assert asyncio.get_running_loop().time() < deadline, f"/readyz never answered {status}"
        await asyncio.sleep(0.2)


async def test_mongodb_outage_refuses_sends_and_recovers_by_itself(nodes, clients, database):
    node = nodes("a")
    ana, ben = await clients(node, ANA), await clients(node, BEN)
    await ben.call("join_group", {"group_id": MATHS})
    before = await ana.call("send_message", {"group_id": MATHS, "content": "before", "client_msg_id": "k0"})
    await ben.wait_event("message")

    database.stop()
    ack = await ana.call("send_message", {"group_id": MATHS, "content": "during", "client_msg_id": "k1"},
                         timeout=30)
    assert ack["ok"] is False and ack["error"]["code"] == "storage_unavailable"
    await _wait_ready(node, 503)
    assert node.status("/healthz") == 200  # the process still serves
    assert await ana.call("typing", {"group_id": MATHS, "is_typing": True}, timeout=30) is not None

    database.start()  # same port, same data
    await _wait_ready(node, 200)
    retry = None
    for _ in range(50):
        retry = await ana.call("send_message", {"group_id": MATHS, "content": "during", "client_msg_id": "k1"},
                               timeout=30)
        if retry["ok"]:
            break
        await asyncio.sleep(0.2)
    assert retry["ok"] and retry["duplicate"] is False and retry["message"]["seq"] == 2
    received = await ben.wait_event("message", 2)
    assert [m["content"] for m in received] == ["before", "during"]  # nothing broadcast for the refusal
    assert await history(ben) == [before["message"], retry["message"]]


async def test_failing_writes_are_storage_unavailable_and_nothing_is_broadcast(nodes, clients, database):
    node = nodes("a")
    ana, ben = await clients(node, ANA), await clients(node, BEN)
    await ben.call("join_group", {"group_id": MATHS})

    def fail_point(mode):
        with MongoClient(database.uri) as admin:
            admin.admin.command({"configureFailPoint": "failCommand", "mode": mode,
                                 "data": {"failCommands": ["insert", "ping"], "errorCode": 2}})

    fail_point("alwaysOn")
    send = {"group_id": MATHS, "content": "x", "client_msg_id": "same"}
    for _ in range(3):
        ack = await ana.call("send_message", send)
        assert ack["ok"] is False and ack["error"]["code"] == "storage_unavailable"
    await _wait_ready(node, 503)
    fail_point("off")
    await _wait_ready(node, 200)
    first = await ana.call("send_message", send)
    again = await ana.call("send_message", send)
    assert first["ok"] and first["duplicate"] is False and first["message"]["seq"] == 1
    assert again == {**first, "duplicate": True}
    await ben.wait_event("message")
    await ben.settle()
    assert ben.events("message") == [first["message"]]  # the refused sends broadcast nothing
    assert await history(ben) == [first["message"]]


async def test_sigterm_during_a_burst_loses_nothing_acknowledged(nodes, clients, env, tmp_path):
    node = nodes("a")
    senders = [await clients(node, user) for user in (ANA, BEN, CAROL)]
    acks: list[dict] = []
    refusals: list[dict] = []

    async def keep_sending(client, tag):
        for i in range(400):
            try:
                ack = await client.call("send_message", {"group_id": MATHS, "content": f"{tag} {i}",
                                                         "client_msg_id": f"{tag}-{i}"}, timeout=10)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError,
                    socketio.exceptions.DisconnectedError):
                return
            (acks if ack["ok"] else refusals).append(ack)
            if not client.sio.connected:
                return

    tasks = [asyncio.ensure_future(keep_sending(c, f"u{i}")) for i, c in enumerate(senders)]
    while len(acks) < 30:
        await asyncio.sleep(0.01)
    code = await asyncio.get_running_loop().run_in_executor(None, node.terminate)
    await asyncio.gather(*tasks)
    assert code == 0
    assert all(r["error"]["code"] == "storage_unavailable" for r in refusals)

    restarted = Node(env, tmp_path, "after", port=node.port).start()
    try:
        reader = await clients(restarted, ANA)
        stored = await history(reader)
        by_id = {m["id"]: m for m in stored}
        # Every acknowledged message is stored, whole, with the acked seq.
        for ack in acks:
            assert by_id[ack["message"]["id"]] == ack["message"]
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
        assert all(m["content"] and m["sender_id"] for m in stored)
    finally:
        restarted.stop()
