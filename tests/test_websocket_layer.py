"""The WebSocket layer under Engine.IO, byte by byte, against a real server process.

Once a WebSocket upgrade is accepted the server reads the connection itself
(``realtime.websocket``); these tests hold it to RFC 6455 where a client would notice:
control frames answered, the closing handshake, the close codes of bad input, bytes that
arrive early or together.
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from tests.support.chat import ANA, SECRET, make_token
from tests.support.probes import HostileNode, hostile_node
from tests.support.wsclient import MATHS, Client, frame

__all__ = ["hostile_node"]  # the fixture, used by name below

PING, PONG, CLOSE = 0x9, 0xA, 0x8
MAX_PAYLOAD = 64 * 1024  # the server's maxPayload (server.app.MAX_PACKET_BYTES)


@pytest.fixture(params=["compiled reader", "pure-Python reader"])
def node(hostile_node, request) -> HostileNode:  # type: ignore[no-untyped-def]
    """A server whose frames aiohttp's compiled reader parses, and one where aiohttp runs
    without its compiled extensions (as where no wheel is built for the platform)."""
    env = {"MONGODB_URI": "memory://", "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    if request.param == "pure-Python reader":
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    node: HostileNode = hostile_node(env)
    return node


async def opened(node: HostileNode) -> Client:
    client = await Client.open(node.port)
    assert (await client.text()).startswith("0{")
    return client


async def closed_with(client: Client) -> int:
    """The code of the close frame the server sends next; the server then closes the TCP connection."""
    try:
        opcode, payload = await client.next_frame()
        while opcode != CLOSE:  # frames sent before it (a ping, an Engine.IO CLOSE packet)
            opcode, payload = await client.next_frame()
        code: int = struct.unpack("!H", payload[:2])[0]
        client.writer.write(frame(payload[:2], CLOSE))  # the client's half of the closing handshake
        assert await asyncio.wait_for(client.reader.read(), 3) == b"", "the server kept the connection open"
        return code
    finally:
        client.close()


async def test_a_ping_frame_is_answered_with_a_pong_carrying_its_payload(node):
    client = await opened(node)
    client.writer.write(frame(b"are you there", PING))
    assert await client.next_frame() == (PONG, b"are you there")
    client.close()


async def test_a_close_frame_is_answered_with_one_and_the_connection_ends(node):
    client = await opened(node)
    client.writer.write(frame(struct.pack("!H", 1000) + b"bye", CLOSE))
    opcode, payload = await client.next_frame()
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1000
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    client.close()


@pytest.mark.parametrize(("payload", "opcode", "code"), [
    pytest.param(b"42[\xff]", 0x1, 1007, id="text that is not UTF-8"),
    pytest.param(b"4" * (MAX_PAYLOAD + 1), 0x1, 1009, id="a message over maxPayload"),
    pytest.param(b"x", 0x0, 1002, id="a continuation with nothing to continue"),
    pytest.param(b"x", 0x3, 1002, id="a frame with a reserved opcode"),
    pytest.param(b"x" * 126, PING, 1002, id="a control frame over 125 bytes"),
])
async def test_a_broken_frame_closes_the_connection_with_its_code(node, payload, opcode, code):
    client = await opened(node)
    client.writer.write(frame(payload, opcode))
    assert await closed_with(client) == code


async def test_a_message_of_exactly_max_payload_is_read(node):
    client = await opened(node)
    client.send("40" + json.dumps({"token": make_token(ANA)}))
    assert (await client.text()).startswith("40{")
    # A send whose text makes the whole frame exactly maxPayload bytes: refused by the chat's own
    # limit on a message's length, in the documented envelope, on a connection that stays open.
    head = "421" + json.dumps(["send_message", {"group_id": MATHS, "content": ""}])
    content = "x" * (MAX_PAYLOAD - len(head))
    client.send("421" + json.dumps(["send_message", {"group_id": MATHS, "content": content}]))
    answer = await client.ack(1)
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
    client.send("422" + json.dumps(["list_groups", {}]))
    assert (await client.ack(2))["ok"]
    client.close()


async def test_a_frame_sent_with_the_upgrade_request_is_read(node):
    client = await Client.open(node.port, early=frame(("40" + json.dumps({"token": make_token(ANA)})).encode()))
    assert (await client.text()).startswith("0{")
    assert (await client.text()).startswith("40{")
    client.close()


async def test_packets_that_arrive_together_are_handled_in_order(node):
    """The sign-in (handled by a task) and the requests behind it in the same TCP read: the
    requests wait for the sign-in, and are answered as a connected member's."""
    client = await opened(node)
    client.writer.write(frame(("40" + json.dumps({"token": make_token(ANA)})).encode())
                        + frame(("421" + json.dumps(["join_group", {"group_id": MATHS}])).encode())
                        + frame(("422" + json.dumps(["list_groups", {}])).encode()))
    assert (await client.text()).startswith("40{")
    assert (await client.ack(1))["ok"]
    assert (await client.ack(2))["ok"]
    client.close()


async def test_the_server_ends_a_session_with_the_closing_handshake(node):
    """A client's Engine.IO CLOSE packet: the server's close frame follows, then the TCP close."""
    client = await opened(node)
    client.send("1")
    assert await closed_with(client) == 1000
