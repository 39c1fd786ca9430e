"""The bundled page when its token runs out (headless Chromium, as tests/test_page.py).

Demo users' tokens are renewed with ``refresh_token`` on the same connection; anyone
else is told the session is ending, and then that it has ended, with a way back in.
The demo token route is served a few-seconds token here, so nothing waits long.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
import socketio
from playwright.async_api import Route, expect

from server.demo import ANA, JUAN, MEI
from server.keys import VERIFIER
from tests.support.browser import TIMEOUT_MS, browser, demo_app, demo_server, demo_store, open_page

pytestmark = pytest.mark.browser
expect.set_options(timeout=TIMEOUT_MS)

CALCULUS = "64b0000000000000000000a1"


def exp_of(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_a_demo_session_renews_its_token_and_stays_connected(browser, demo_app, demo_server):
    issued: list[str] = []

    async def short_tokens(route: Route) -> None:
        token = demo_app[VERIFIER].issue(route.request.post_data_json["user_id"], ttl_seconds=4)
        issued.append(token)
        await route.fulfill(json={"ok": True, "token": token})

    chat = await open_page(browser, demo_server)
    await chat.page.route("**/demo/token", short_tokens)
    await chat.hook("demo-user").select_option(ANA)
    await chat.hook("demo-sign-in").click()
    await expect(chat.hook("connection-state")).to_have_text("connected")
    await chat.open_group(CALCULUS)
    socket_id = await chat.page.evaluate("studyChat.socket.id")

    await sleep_until(exp_of(issued[0]) + 2.5)  # past the first token's end, and the server's 2 s
    assert len(issued) >= 2  # renewed at least once
    await expect(chat.hook("connection-state")).to_have_text("connected")
    assert await chat.page.evaluate("studyChat.socket.id") == socket_id  # the same connection, never dropped
    await expect(chat.hook("session-status")).to_have_text("")

    # It still receives what others send.
    juan = socketio.AsyncClient(reconnection=False)
    try:
        await juan.connect(str(demo_server.make_url("")), auth={"token": demo_app[VERIFIER].issue(JUAN)},
                           transports=["websocket"], wait_timeout=10)
        ack = await juan.call("send_message", {"group_id": CALCULUS, "content": "¿Seguís ahí?"})
        assert ack["ok"], ack
        await expect(chat.message_with("¿Seguís ahí?")).to_be_visible()
    finally:
        await juan.disconnect()
    assert not chat.errors


async def test_a_token_session_is_told_it_ends_then_that_it_ended(browser, demo_app, demo_server):
    token = demo_app[VERIFIER].issue(MEI, ttl_seconds=6)  # room for a loaded machine to sign in first
    chat = await open_page(browser, demo_server)
    await chat.enter_token(token)
    await expect(chat.hook("connection-state")).to_have_text("connected")

    status = chat.hook("session-status")
    assert await status.get_attribute("role") == "status"
    await expect(status).to_contain_text("Your session ends at")
    await expect(chat.hook("session-sign-in")).to_be_visible()

    await sleep_until(exp_of(token))
    await expect(chat.hook("connection-state")).to_have_text("disconnected", timeout=3000)
    await expect(status).to_contain_text("Your session has ended")
    await asyncio.sleep(1)  # no reconnect loop on the dead token
    await expect(chat.hook("connection-state")).to_have_text("disconnected")
    assert not chat.dialogs and not chat.errors

    # Keyboard: from "Sign out", Tab reaches "Sign in again"; Enter leads to the sign-in form.
    await chat.hook("sign-out").focus()
    await chat.page.keyboard.press("Tab")
    await expect(chat.hook("session-sign-in")).to_be_focused()
    await chat.page.keyboard.press("Enter")
    await expect(chat.hook("token-input")).to_be_visible()
    await expect(chat.hook("token-input")).to_be_focused()
    await expect(status).to_have_text("")


async def test_unsent_messages_wait_in_the_tab_for_their_writer_while_someone_else_signs_in_and_out(
        browser, demo_app, demo_server, demo_store):
    """What one person wrote after their sign-in ran out is kept in the tab for them alone: another
    person signing in on the same tab, sending and signing out neither sends it nor loses it."""
    token = demo_app[VERIFIER].issue(MEI, ttl_seconds=6)
    chat = await open_page(browser, demo_server)
    await chat.enter_token(token)
    await expect(chat.hook("connection-state")).to_have_text("connected")
    await chat.open_group(CALCULUS)
    await sleep_until(exp_of(token))
    await expect(chat.hook("connection-state")).to_have_text("disconnected", timeout=3000)
    written = ["Mei, after the end 1", "Mei, after the end 2"]
    for text in written:
        await chat.send(text)
        await expect(chat.message_with(text)).to_have_attribute("data-pending", "true")
    await chat.hook("session-sign-in").click()
    await expect(chat.hook("token-input")).to_be_visible()

    # Juan, on the same tab: he sends (his outbox fills and empties) and signs out.
    await chat.enter_token(demo_app[VERIFIER].issue(JUAN))
    await expect(chat.hook("connection-state")).to_have_text("connected")
    await chat.open_group(CALCULUS)
    await chat.send("Juan, in between")
    await expect(chat.message_with("Juan, in between")).to_have_attribute("data-pending", "false")
    await expect(chat.message_with(written[0])).to_have_count(0)  # not his to send
    await chat.hook("sign-out").click()
    await expect(chat.hook("token-input")).to_be_visible()

    # Mei again: what she wrote goes now, once each.
    await chat.enter_token(demo_app[VERIFIER].issue(MEI))
    await expect(chat.hook("connection-state")).to_have_text("connected")
    await chat.open_group(CALCULUS)
    for text in written:
        await expect(chat.message_with(text)).to_have_attribute("data-pending", "false")
    stored, _ = await demo_store.get_messages(CALCULUS, limit=100_000, after_seq=0)
    contents = [m["content"] for m in stored]
    assert contents[-3:] == ["Juan, in between", *written], contents
    assert not chat.dialogs and not chat.errors
