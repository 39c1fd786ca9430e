"""Engine.IO v4 as the reference Node.js server speaks it, on ``create_app``'s real server.

Raw HTTP long-polling and raw WebSocket, so that every byte, status code and close is visible
(the cases of socketio/engine.io-protocol's test suite, adapted to a Socket.IO server: a
message is a Socket.IO packet here, not an echo).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.keys import SIO
from tests.support.chat import ANA, make_settings, make_token
from tests.support.eio import PATH, Polling, closed_within, ws_url

MAX_PAYLOAD = 64 * 1024


def connect_packet(user_id: str = ANA) -> str:
    return "40" + json.dumps({"token": make_token(user_id)})


def event_of_size(size: int, ack_id: int = 1) -> str:
    """An unknown Socket.IO event with an ack, padded to exactly ``size`` bytes (ASCII)."""
    head, tail = f'42{ack_id}["no_such_event","', '"]'
    return head + "x" * (size - len(head) - len(tail)) + tail


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def quick_heartbeat(server: Any, interval: float = 0.3, timeout: float = 0.2) -> None:
    """Engine.IO's heartbeat of the app's server, shortened (the handshake announces it)."""
    eio = server.app[SIO].eio
    eio.ping_interval, eio.ping_timeout = interval, timeout


async def open_ws(http: aiohttp.ClientSession, server_url: str) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await http.ws_connect(ws_url(server_url))
    opened = await ws.receive_str(timeout=10)
    assert opened.startswith("0{"), opened
    return ws, json.loads(opened[1:])


# --- handshake ----------------------------------------------------------------------------------


async def test_polling_handshake_announces_exactly_the_fields_of_the_protocol(http, server_url):
    async with http.get(f"{server_url}{PATH}?EIO=4&transport=polling") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; charset=UTF-8"
        body = await response.text()
    assert body[0] == "0"
    value = json.loads(body[1:])
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert isinstance(value["sid"], str) and value["sid"]
    assert value["upgrades"] == ["websocket"]
    assert (value["pingInterval"], value["pingTimeout"], value["maxPayload"]) == (25000, 20000, MAX_PAYLOAD)


async def test_websocket_handshake_announces_no_upgrades(http, server_url):
    ws, value = await open_ws(http, server_url)
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert value["upgrades"] == []
    assert (value["pingInterval"], value["pingTimeout"], value["maxPayload"]) == (25000, 20000, MAX_PAYLOAD)
    await ws.close()


async def test_ping_interval_is_announced_in_exact_milliseconds(http, server, server_url):
    quick_heartbeat(server, 0.3, 0.2)
    handshake = (await Polling(http, server_url).open()).handshake
    assert (handshake["pingInterval"], handshake["pingTimeout"]) == (300, 200)
    ws, value = await open_ws(http, server_url)
    assert (value["pingInterval"], value["pingTimeout"]) == (300, 200)
    await ws.close()


@pytest.mark.parametrize("query", ["transport=polling", "EIO=abc&transport=polling", "EIO=3&transport=polling",
                                   "EIO=4", "EIO=4&transport=abc", "transport=websocket"])
async def test_a_handshake_with_a_bad_version_or_transport_is_400(http, server_url, query):
    async with http.get(f"{server_url}{PATH}?{query}") as response:
        assert response.status == 400


@pytest.mark.parametrize("query", ["EIO=3&transport=websocket", "transport=websocket", "EIO=4",
                                   "EIO=4&transport=abc"])
async def test_a_websocket_with_a_bad_version_or_transport_is_refused_with_400(http, server_url, query):
    url = server_url.replace("http", "ws", 1) + f"{PATH}?{query}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url)
    assert refused.value.status == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_a_handshake_with_another_method_than_get_is_400(http, server_url, method):
    async with http.request(method, f"{server_url}{PATH}?EIO=4&transport=polling") as response:
        assert response.status == 400


async def test_an_unknown_session_is_400(http, server_url):
    for method in ("GET", "POST"):
        async with http.request(method, f"{server_url}{PATH}?EIO=4&transport=polling&sid=nope", data="3") as r:
            assert r.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(server_url, sid="nope"))
    assert refused.value.status == 400


@pytest.fixture
def settings():
    return make_settings(cors_origins=("https://app.example",))


async def test_options_and_an_allowed_origin_get_the_cors_answer(http, server_url):
    url = f"{server_url}{PATH}?EIO=4&transport=polling"
    headers = {"Origin": "https://app.example", "Access-Control-Request-Headers": "content-type"}
    async with http.options(url, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert set(response.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) >= {"GET", "POST"}
        assert response.headers["Access-Control-Allow-Headers"] == "content-type"
    async with http.get(url, headers={"Origin": "https://app.example"}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with http.get(url, headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 400
        assert "Access-Control-Allow-Origin" not in response.headers


# --- messages over long-polling -----------------------------------------------------------------


async def test_a_post_answers_ok_and_the_connect_reply_comes_by_poll(http, server_url):
    session = await Polling(http, server_url).open()
    status, body = await session.post(connect_packet())
    assert (status, body) == (200, "ok")
    [reply] = await session.packets(1)
    assert reply.startswith("40{") and "sid" in json.loads(reply[2:])


async def test_polling_payloads_are_separated_by_record_separator_both_ways(http, server_url):
    session = await Polling(http, server_url).open()
    await session.post(connect_packet())
    await session.packets(1)
    assert await session.post('421["no_such_event"]\x1e422["no_such_event"]') == (200, "ok")
    await asyncio.sleep(0.5)  # both acks wait in the queue: one poll carries both
    status, body = await session.get()
    assert status == 200
    acks = body.split("\x1e")
    assert [a[:4] for a in acks] == ["431[", "432["], body
    assert all(json.loads(a[3:])[0]["ok"] is False for a in acks)


async def test_binary_goes_base64_over_polling_and_as_a_binary_frame_over_websocket(http, server, server_url):
    eio = server.app[SIO].eio
    session = await Polling(http, server_url).open()
    await eio.send(session.sid, b"\x01\x02\x03\x04")
    assert await session.get() == (200, "bAQIDBA==")
    ws, opened = await open_ws(http, server_url)
    await eio.send(opened["sid"], b"\x01\x02\x03\x04")
    message = await ws.receive(timeout=10)
    assert (message.type, message.data) == (aiohttp.WSMsgType.BINARY, b"\x01\x02\x03\x04")
    await ws.close()


@pytest.mark.parametrize("payload", ["abc", "4" + "[" * 5000], ids=["not-a-packet", "json-too-deep"])
async def test_an_invalid_polling_payload_is_400_and_ends_the_session(http, server_url, payload):
    session = await Polling(http, server_url).open()
    assert (await session.post(payload))[0] == 400
    assert (await session.get())[0] == 400


async def test_a_second_concurrent_poll_ends_the_session(http, server_url):
    session = await Polling(http, server_url).open()
    first = asyncio.ensure_future(session.get(timeout=10))
    await asyncio.sleep(0.3)
    second = await session.get(timeout=10)
    assert second[0] in (400, 500)
    assert await first == (200, "1")
    assert (await session.get())[0] == 400


async def test_a_second_post_while_one_is_being_read_ends_the_session(http, server_url):
    """As the reference server ("data request overlap"): 400, and the session is gone."""
    session = await Polling(http, server_url).open()

    async def slow_body():
        yield b"4"
        await asyncio.sleep(1.0)
        yield b"2hello"

    first = asyncio.ensure_future(session.post(slow_body()))
    await asyncio.sleep(0.3)
    assert (await session.post("3"))[0] == 400
    await first
    assert (await session.get())[0] == 400


async def test_a_close_packet_over_polling_answers_the_waiting_poll_with_a_noop(http, server_url):
    session = await Polling(http, server_url).open()
    waiting = asyncio.ensure_future(session.get(timeout=10))
    await asyncio.sleep(0.3)
    assert await session.post("1") == (200, "ok")
    assert await waiting == (200, "6")
    assert (await session.get())[0] == 400


# --- messages over WebSocket --------------------------------------------------------------------


async def test_a_close_packet_over_websocket_closes_it_at_once(http, server, server_url):
    ws, opened = await open_ws(http, server_url)
    await ws.send_str("1")
    assert await closed_within(ws, 3), "the WebSocket stayed open after the client's CLOSE packet"
    await ws.close()
    for _ in range(100):  # the session is gone with it
        if opened["sid"] not in server.app[SIO].eio.sockets:
            break
        await asyncio.sleep(0.02)
    assert opened["sid"] not in server.app[SIO].eio.sockets


@pytest.mark.parametrize("frame", ["abc", "9", "", "2", "4" + "[" * 5000], ids=["abc", "9", "empty", "ping", "deep"])
async def test_an_invalid_packet_over_websocket_ends_the_session_at_once(http, server_url, frame):
    """Anything that is not an Engine.IO packet a client may send (a client's PING too: the
    heartbeat goes from the server in v4) ends the session, not the ping timeout later."""
    ws, _ = await open_ws(http, server_url)
    await ws.send_str(frame)
    assert await closed_within(ws, 3), f"the WebSocket stayed open after {frame!r}"


# --- heartbeat ----------------------------------------------------------------------------------


async def test_ping_and_pong_over_polling(http, server, server_url):
    quick_heartbeat(server, 0.3, 2.0)
    session = await Polling(http, server_url).open()
    for _ in range(3):
        assert await session.get() == (200, "2")
        assert await session.post("3") == (200, "ok")


async def test_ping_and_pong_over_websocket(http, server, server_url):
    quick_heartbeat(server, 0.3, 2.0)
    ws, _ = await open_ws(http, server_url)
    for _ in range(3):
        assert await ws.receive_str(timeout=5) == "2"
        await ws.send_str("3")
    await ws.close()


async def test_a_poll_after_ping_interval_and_timeout_without_pong_is_400(http, server, server_url):
    """The session ends ``pingInterval + pingTimeout`` after the handshake when no pong came,
    whenever the server's own sweep of the sessions runs."""
    quick_heartbeat(server, 0.3, 1.0)
    session = await Polling(http, server_url).open()
    await asyncio.sleep(1.8)
    assert (await session.get())[0] == 400


async def test_a_websocket_without_pong_is_closed_after_the_ping_timeout(http, server, server_url):
    quick_heartbeat(server, 0.3, 0.2)
    ws, _ = await open_ws(http, server_url)
    assert await closed_within(ws, 5)


# --- upgrade ------------------------------------------------------------------------------------


async def test_upgrade_from_polling_to_websocket(http, server_url):
    session = await Polling(http, server_url).open()
    ws = await http.ws_connect(ws_url(server_url, sid=session.sid))
    await ws.send_str("2probe")
    assert await ws.receive_str(timeout=10) == "3probe"
    assert await session.get() == (200, "6")  # the poll ends cleanly
    await ws.send_str("5")
    await ws.send_str(connect_packet())
    reply = await ws.receive_str(timeout=10)
    assert reply.startswith("40{"), reply
    assert (await session.get())[0] == 400  # no HTTP request after the upgrade
    await ws.close()


@pytest.mark.parametrize("sent", [[], ["2probe"]], ids=["silent", "probe-only"])
async def test_an_upgrade_websocket_that_goes_quiet_is_closed_and_the_session_keeps_polling(
    http, server, server_url, sent
):
    """A WebSocket opened to upgrade a polling session has ``upgrade_timeout`` (10 s, as the
    reference server's upgradeTimeout; 0.5 s here) for its probe and UPGRADE packets: then it
    is closed, and the session goes on over polling."""
    server.app[SIO].eio.upgrade_timeout = 0.5
    session = await Polling(http, server_url).open()
    ws = await http.ws_connect(ws_url(server_url, sid=session.sid))
    for frame in sent:
        await ws.send_str(frame)
    if sent:
        assert await ws.receive_str(timeout=10) == "3probe"
    assert await closed_within(ws, 5), "the upgrading WebSocket stayed open"
    assert await session.post(connect_packet()) == (200, "ok")
    status, text = await session.get()
    assert status == 200 and "40{" in text, text


@pytest.mark.parametrize("sent", [["5"], ["2notprobe"], ["2probe", "2probe"], ["2probe", "not a packet"]],
                         ids=["upgrade-first", "wrong-probe", "probe-twice", "garbage-for-upgrade"])
async def test_an_upgrade_websocket_that_breaks_the_probe_is_closed_and_the_session_keeps_polling(
    http, server_url, sent
):
    """Anything but ``2probe`` then ``5`` closes the upgrading WebSocket at once; the session is
    still there on polling, as the reference server leaves it."""
    session = await Polling(http, server_url).open()
    ws = await http.ws_connect(ws_url(server_url, sid=session.sid))
    for frame in sent:
        await ws.send_str(frame)
    if sent[0] == "2probe":
        assert await ws.receive_str(timeout=10) == "3probe"
    assert await closed_within(ws, 5), "the upgrading WebSocket stayed open"
    assert await session.post(connect_packet()) == (200, "ok")
    status, text = await session.get()
    assert status == 200 and "40{" in text, text


async def test_no_stray_noop_after_an_upgrade_with_no_poll_waiting(http, server_url):
    session = await Polling(http, server_url).open()
    ws = await http.ws_connect(ws_url(server_url, sid=session.sid))
    await ws.send_str("2probe")
    assert await ws.receive_str(timeout=10) == "3probe"
    await ws.send_str("5")
    await ws.send_str(connect_packet())
    first = await ws.receive_str(timeout=10)
    assert first.startswith("40{"), f"first frame after the upgrade: {first!r}"
    await ws.close()


async def test_a_second_websocket_for_an_upgraded_session_is_accepted_then_closed(http, server_url):
    session = await Polling(http, server_url).open()
    ws = await http.ws_connect(ws_url(server_url, sid=session.sid))
    await ws.send_str("2probe")
    assert await ws.receive_str(timeout=10) == "3probe"
    await ws.send_str("5")
    second = await http.ws_connect(ws_url(server_url, sid=session.sid))
    assert await closed_within(second, 3)
    await ws.send_str(connect_packet())  # the first one carries on
    assert (await ws.receive_str(timeout=10)).startswith("40{")
    await ws.close()


# --- payload limits -----------------------------------------------------------------------------


async def test_websocket_frame_at_the_limit_is_handled_and_one_byte_over_closes(http, server_url):
    ws, opened = await open_ws(http, server_url)
    assert opened["maxPayload"] == MAX_PAYLOAD
    await ws.send_str(connect_packet())
    assert (await ws.receive_str(timeout=10)).startswith("40{")
    await ws.send_str(event_of_size(MAX_PAYLOAD, ack_id=1))
    ack = await ws.receive_str(timeout=10)
    assert ack.startswith("431[") and json.loads(ack[3:])[0]["ok"] is False
    await ws.send_str(event_of_size(MAX_PAYLOAD + 1, ack_id=2))
    assert await closed_within(ws, 3)


async def test_polling_post_at_the_limit_is_handled(http, server_url):
    session = await Polling(http, server_url).open()
    await session.post(connect_packet())
    await session.packets(1)
    assert await session.post(event_of_size(MAX_PAYLOAD)) == (200, "ok")
    [ack] = await session.packets(1)
    assert ack.startswith("431[") and json.loads(ack[3:])[0]["ok"] is False


async def test_an_over_limit_polling_post_is_413_at_once_and_ends_the_session(http, server_url):
    session = await Polling(http, server_url).open()
    status, _ = await session.post(event_of_size(MAX_PAYLOAD + 1), timeout=5)
    assert status == 413
    assert (await session.get(timeout=5))[0] == 400


async def test_an_over_limit_chunked_polling_post_is_413_and_ends_the_session(http, server_url):
    session = await Polling(http, server_url).open()
    body = event_of_size(4 * MAX_PAYLOAD).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    status, _ = await session.post(chunks(), timeout=5)
    assert status == 413
    assert (await session.get(timeout=5))[0] == 400


async def test_a_chunked_polling_post_within_the_limit_is_read(http, server_url):
    session = await Polling(http, server_url).open()

    async def chunks() -> AsyncIterator[bytes]:
        yield connect_packet().encode()

    assert await session.post(chunks()) == (200, "ok")
    [reply] = await session.packets(1)
    assert reply.startswith("40{")


# --- order and framing --------------------------------------------------------------------------


async def test_each_packet_is_a_frame_of_its_own_and_in_order(http, server_url):
    ws, _ = await open_ws(http, server_url)
    await ws.send_str(connect_packet())
    reply = await ws.receive_str(timeout=10)
    assert reply.startswith("40{") and set(json.loads(reply[2:])) == {"sid"}
    for ack_id in range(1, 21):
        await ws.send_str(f'42{ack_id}["list_groups"]')
    frames = [await ws.receive_str(timeout=10) for _ in range(20)]
    assert [f[:f.index("[")] for f in frames] == [f"43{i}" for i in range(1, 21)]
    assert all(len(json.loads(f[f.index("["):])) == 1 for f in frames)
    await ws.close()


async def test_many_packets_in_one_polling_payload_are_all_read(http, server_url):
    """A client flushes everything it buffered in one POST; python-engineio stops at 16."""
    session = await Polling(http, server_url).open()
    await session.post(connect_packet())
    await session.packets(1)
    assert await session.post("\x1e".join(f'42{i}["list_groups"]' for i in range(1, 31))) == (200, "ok")
    acks = await session.packets(30)
    assert sorted(int(a[2:a.index("[")]) for a in acks) == list(range(1, 31))


# --- the inbound frame budget -------------------------------------------------------------------


async def test_a_websocket_over_its_frame_budget_is_closed(http, server, server_url):
    server.app[SIO].eio.set_frame_budget(5)  # 50 frames per 10 s
    ws, _ = await open_ws(http, server_url)
    await ws.send_str(connect_packet())
    assert (await ws.receive_str(timeout=10)).startswith("40{")
    for _ in range(40):
        await ws.send_str("3")
    await ws.send_str('421["list_groups"]')
    assert (await ws.receive_str(timeout=10)).startswith("431[")  # within the budget: served
    for _ in range(20):
        await ws.send_str("3")
    assert await closed_within(ws, 5), "a connection over its frame budget stayed open"


async def test_a_polling_session_over_its_frame_budget_is_closed(http, server, server_url):
    server.app[SIO].eio.set_frame_budget(5)
    session = await Polling(http, server_url).open()
    assert await session.post("\x1e".join(["3"] * 40)) == (200, "ok")
    assert (await session.post("\x1e".join(["3"] * 20)))[0] == 429
    assert (await session.get())[0] == 400


async def test_the_default_frame_budget_is_set_from_the_settings(server):
    assert server.app[SIO].eio.frame_budget == 50_000  # FRAME_BUDGET_PER_S=5000 over 10 s


# --- the server closing a session ---------------------------------------------------------------


async def test_a_server_disconnect_of_a_silent_polling_client_does_not_wait_forever(http, server, server_url):
    """Engine.IO's close waits for the client to fetch the CLOSE packet, with no end."""
    quick_heartbeat(server, 0.3, 0.5)
    eio = server.app[SIO].eio
    session = await Polling(http, server_url).open()
    await asyncio.wait_for(eio.disconnect(session.sid), 5)
    assert (await session.get())[0] == 400


async def test_a_server_disconnect_of_a_polling_client_reaches_it_on_its_next_poll(http, server, server_url):
    eio = server.app[SIO].eio
    session = await Polling(http, server_url).open()
    closing = asyncio.ensure_future(eio.disconnect(session.sid))
    await asyncio.sleep(0.2)
    assert await session.get() == (200, "1")
    await asyncio.wait_for(closing, 5)
    assert (await session.get())[0] == 400


def test_frame_budget_per_s_is_read_from_the_environment_and_0_turns_it_off():
    from server.app import create_app
    from server.config import Settings
    from tests.support.chat import SECRET

    env = {"MONGODB_URI": "memory://", "JWT_SECRET": SECRET}
    assert Settings.from_env({**env, "FRAME_BUDGET_PER_S": "12.5"}).frame_budget_per_s == 12.5
    off = Settings.from_env({**env, "FRAME_BUDGET_PER_S": "0"})
    assert create_app(off)[SIO].eio.frame_budget == 0
