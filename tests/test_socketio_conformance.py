"""Socket.IO v5 as the reference server speaks it, byte for byte where the
specification fixes the bytes, on the real server path over a raw WebSocket.

The cases follow the socket.io-protocol test suite; where this protocol decides
otherwise (binary packets are refused, a malformed event with an ack id is
answered ``invalid_payload``) the test says so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from server.app import create_app
from server.keys import SIO
from tests.support.chat import ANA, make_token, seeded_store
from tests.support.raw import RawSocket

QUICK = 5


async def _engine_open(session: aiohttp.ClientSession, server_url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
    opened = await ws.receive_str(timeout=QUICK)
    assert opened.startswith("0{")
    return ws


async def _next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = QUICK) -> str:
    """The next text frame that is not an Engine.IO ping (pings are answered)."""
    while True:
        text = await ws.receive_str(timeout=timeout)
        if text != "2":
            return text
        await ws.send_str("3")


async def _closed_by_server(ws: aiohttp.ClientWebSocketResponse, timeout: float = QUICK) -> list[Any]:
    """Wait until the server closes the WebSocket; the frames it sent before,
    but for Engine.IO's CLOSE packet (``1``) that may precede the closing frame."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return seen[:-1] if seen[-1:] == ["1"] else seen
            if msg.data == "2":
                await ws.send_str("3")
                continue
            seen.append(msg.data)


def _ack(frame: str, ack_id: int) -> Any:
    prefix = f"43{ack_id}["
    assert frame.startswith(prefix), frame
    (answer,) = json.loads(frame[len(prefix) - 1:])
    return answer


# -- CONNECT --

async def test_connect_with_auth_answers_the_sid_only(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await _engine_open(session, server_url)
        await ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
        reply = await _next_text(ws)
        assert reply.startswith("40{")
        handshake = json.loads(reply[2:])
        assert set(handshake) == {"sid"} and isinstance(handshake["sid"], str) and handshake["sid"]
        await ws.close()


async def test_connect_without_auth_is_a_connect_error_with_the_envelope(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await _engine_open(session, server_url)
        await ws.send_str("40")
        reply = await _next_text(ws)
        assert reply.startswith("44{"), reply
        error = json.loads(reply[2:])
        assert error["data"]["code"] == "unauthorized" and error["message"] == error["data"]["message"]
        await ws.close()


@pytest.mark.parametrize("frame", ["40/random", "40/random,", '40/random,{"token":"x"}'])
async def test_connect_to_an_unknown_namespace_is_invalid_namespace(server_url, frame):
    async with aiohttp.ClientSession() as session:
        ws = await _engine_open(session, server_url)
        await ws.send_str(frame)
        assert await _next_text(ws) == '44/random,{"message":"Invalid namespace"}'
        await ws.close()


async def test_connect_twice_to_the_same_namespace_closes_the_connection(server_url):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
        assert await _closed_by_server(raw.ws) == []


async def test_connect_reply_leaves_before_what_the_connect_handler_emits(aiohttp_server, settings):
    """An event emitted while the connection's connect handler runs (a warning
    for a short-lived token, say) reaches the client after ``40{"sid":...}``."""
    app = create_app(settings, storage=seeded_store())
    sio = app[SIO]
    signed_in = sio.handlers["/"]["connect"]

    async def connect_then_greet(sid: str, *args: Any) -> Any:
        accepted = await signed_in(sid, *args)
        await sio.emit("greeting", {"hello": 1}, to=sid)
        return accepted

    sio.on("connect", connect_then_greet)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        ws = await _engine_open(session, url)
        await ws.send_str("40" + json.dumps({"token": make_token(ANA)}))
        frames = [await _next_text(ws), await _next_text(ws)]
        await ws.close()
    assert frames[0].startswith('40{"sid":'), frames
    assert frames[1] == '42["greeting",{"hello":1}]', frames


# -- DISCONNECT, EVENT, ACK --

async def test_disconnect_leaves_the_connection_open_and_then_in_no_namespace(server_url):
    """``41``: the Engine.IO connection stays (a ping still arrives); an event
    for the namespace left afterwards closes it, as the reference server does."""
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str("41")
        await asyncio.sleep(0.3)
        assert not raw.ws.closed
        await raw.ws.send_str('421["list_groups"]')
        assert await _closed_by_server(raw.ws) == []


async def test_event_with_an_ack_id_is_answered_with_that_id(server_url):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str('42456["list_groups"]')
        reply = await _next_text(raw.ws)
        assert reply.startswith("43456[{")
        assert _ack(reply, 456)["ok"] is True
        await raw.ws.send_str('42["list_groups"]')  # no ack id: handled, nothing answered
        await raw.ws.send_str('427["list_groups"]')
        assert _ack(await _next_text(raw.ws), 7)["ok"] is True
        await raw.ws.close()


@pytest.mark.parametrize("frame", ['42/admin,1["list_groups"]', '43/admin,1[]', "41/admin"])
async def test_a_packet_for_a_namespace_not_connected_closes_the_connection(server_url, frame):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str(frame)
        assert await _closed_by_server(raw.ws) == []


async def test_an_event_before_connect_closes_the_connection(server_url):
    async with aiohttp.ClientSession() as session:
        ws = await _engine_open(session, server_url)
        await ws.send_str('421["list_groups"]')
        assert await _closed_by_server(ws) == []


# -- malformed packets --

@pytest.mark.parametrize("frame", ["4abc", "44", "47", '44{"message":"x"}'])
async def test_an_unknown_packet_type_closes_the_connection(server_url, frame):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str(frame)
        assert await _closed_by_server(raw.ws) == []


@pytest.mark.parametrize("payload", ["{}", "[]", '"list_groups"', "null", "true"])
async def test_an_event_payload_that_is_not_a_non_empty_array_is_invalid_payload(server_url, payload):
    """The specification closes the connection here; this protocol answers every
    bad input that carries an ack id, and keeps serving."""
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str("421" + payload)
        answer = await raw.ack(1)
        assert answer is not None, f"never answered; frames: {raw.replies}"
        assert answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
        assert (await raw.call(2, '["list_groups"]'))["ok"] is True
        await raw.ws.close()


# -- binary packets: refused before anything is buffered --

REFUSED = {"code": "invalid_payload"}


async def test_binary_event_with_an_ack_id_is_refused_and_its_attachments_skipped(server_url):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str('452-9["list_groups",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        await raw.ws.send_bytes(b"\x01\x02\x03")
        await raw.ws.send_bytes(b"\x04\x05\x06")
        answer = await raw.ack(9)
        assert answer is not None, f"never answered; frames: {raw.replies}"
        assert answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
        assert set(answer["error"]) >= {"code", "message", "details"}
        assert (await raw.call(10, '["list_groups"]'))["ok"] is True  # the attachments were not taken as packets
        await raw.ws.close()


async def test_binary_event_announcing_billions_of_attachments_buffers_nothing(server_url, server):
    sio = server.app[SIO]
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str('459999999999-3["send_message",{"_placeholder":true,"num":0}]')
        chunk = b"\xff" * 60_000
        for _ in range(200):
            await raw.ws.send_bytes(chunk)
        answer = await raw.ack(3)
        assert answer is not None and answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
        await raw.ws.send_str('424["list_groups"]')  # text frames are packets again, not attachments
        assert (await raw.ack(4)) is not None, raw.replies
        assert sio._binary_packet == {}  # python-socketio's attachment buffer holds nothing
        await raw.ws.close()


@pytest.mark.parametrize("frame", [
    '451-["list_groups",{"_placeholder":true,"num":0}]',  # no ack id: nothing to answer
    '461-5[{"_placeholder":true,"num":0}]',  # BINARY_ACK: the server asked for no ack
    '45x-1["list_groups"]',  # not a binary header
])
async def test_other_binary_packets_close_the_connection(server_url, frame):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_str(frame)
        await raw.ws.send_bytes(b"\x01")
        assert await _closed_by_server(raw.ws) == []


async def test_a_binary_frame_outside_a_binary_packet_closes_the_connection(server_url):
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        await raw.ws.send_bytes(b"4\x01\x02")
        assert await _closed_by_server(raw.ws) == []


async def test_python_client_sending_bytes_gets_invalid_payload(connect):
    """What a python-socketio user sees when a payload holds ``bytes``."""
    ana = await connect(ANA)
    answer = await ana.sio.call("send_message", {"group_id": "x", "content": "hi", "file": b"\x00"}, timeout=QUICK)
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_payload"
    assert (await ana.call("list_groups"))["ok"] is True
