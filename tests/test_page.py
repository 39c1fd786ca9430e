"""The bundled test page (static/), driven in headless Chromium like a person would use it.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium chromium-driver`);
a missing browser fails the tests with that hint instead of skipping them.
Screenshots land in tests/artifacts/ (gitignored). The chat view one is copied to
docs/screenshot.png, the README's, when that file is missing or UPDATE_SCREENSHOT=1 is set,
so that a test run does not dirty the work tree.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import expect

from server.demo import ANA, JUAN, LUCIA, MEI
from server.keys import VERIFIER
from storage.base import StorageUnavailable
from tests.support.browser import (
    TIMEOUT_MS,
    browser,
    demo_app,
    demo_server,
    demo_store,
    open_page,
    sign_in_demo,
)

pytestmark = pytest.mark.browser
expect.set_options(timeout=TIMEOUT_MS)

CALCULUS = "64b0000000000000000000a1"
CHEMISTRY = "64b0000000000000000000a2"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"


async def stored_contents(store, group_id: str) -> list[str]:
    messages, _ = await store.get_messages(group_id, limit=100_000, after_seq=0)
    return [m["content"] for m in messages]


async def expect_exactly(chat, contents: list[str]) -> None:
    """The page shows these messages, seq 1..n in order, each once, none pending."""
    seqs = list(range(1, len(contents) + 1))
    await expect(chat.page.locator('[data-testid="message"][data-seq]')).to_have_count(len(contents))
    await expect(chat.page.locator('[data-testid="message"][data-pending="true"]')).to_have_count(0)
    shown = await chat.shown()
    assert [m["seq"] for m in shown] == seqs
    assert [m["content"] for m in shown] == contents


async def test_two_users_exchange_messages_both_ways(browser, demo_server, demo_store):
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await expect(ana.hook("current-user")).to_have_text("Ana García")

    # The group list, with unread counts: Mei's and Juan's seeded messages.
    calculus = ana.page.locator(f'[data-testid="group"][data-group-id="{CALCULUS}"]')
    await expect(ana.hook("group")).to_have_count(2)
    await expect(calculus.get_by_test_id("unread-count")).to_have_text("2")

    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)
    await expect(ana.hook("group-name")).to_have_text("Calculus I")
    for chat in (ana, juan):
        await expect_exactly(chat, await stored_contents(demo_store, CALCULUS))
    first = (await ana.shown())[0]
    assert first["sender"] == "Ana García" and first["time"]
    # Opening the group marks it read.
    await expect(calculus.get_by_test_id("unread-count")).to_have_count(0)

    # Presence both ways.
    await expect(ana.hook("online").get_by_test_id("online-user").filter(has_text="Juan Pérez")).to_be_visible()
    await expect(juan.hook("online").get_by_test_id("online-user").filter(has_text="Ana García")).to_be_visible()

    # Ana types: Juan sees it; she looks away (blur): he sees her stop well before
    # the 6 s expiry; she types again, and sends with Enter.
    box = ana.hook("message-input")
    await box.click()
    await box.press_sequentially("Hola Juan, ¿estudiamos")
    await expect(juan.hook("typing")).to_have_text("Ana García is typing…")
    await ana.hook("group-name").click()
    await expect(juan.hook("typing")).to_have_text("", timeout=3000)
    await box.click()
    await box.press_sequentially(" mañana?")
    await expect(juan.hook("typing")).to_have_text("Ana García is typing…")
    await box.press("Enter")
    await expect(box).to_have_value("")
    for chat in (ana, juan):
        await expect(chat.message(4)).to_contain_text("Hola Juan, ¿estudiamos mañana?")
        await expect(chat.message(4).get_by_test_id("message-sender")).to_have_text("Ana García")
        await expect(chat.message(4)).to_have_attribute("data-pending", "false")
    await expect(juan.hook("typing")).to_have_text("")

    await juan.send("Sí, a las 10 en la biblioteca.")
    for chat in (ana, juan):
        await expect(chat.message(5)).to_contain_text("Sí, a las 10 en la biblioteca.")
        await expect(chat.message(5).get_by_test_id("message-sender")).to_have_text("Juan Pérez")

    await ana.send("¡Perfecto, hasta mañana!")
    await expect(ana.message(6)).to_have_attribute("data-pending", "false")
    contents = await stored_contents(demo_store, CALCULUS)
    assert len(contents) == 6
    for chat in (ana, juan):
        await expect_exactly(chat, contents)

    # The chat view for the README, with Juan typing a reply.
    await juan.hook("message-input").press_sequentially("Traigo mis apuntes")
    await expect(ana.hook("typing")).to_have_text("Juan Pérez is typing…")
    shot = await ana.screenshot("chat-view.png")
    if os.environ.get("UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    await juan.screenshot("chat-view-juan.png")
    assert not ana.errors and not juan.errors


async def test_html_in_messages_renders_as_text(browser, demo_server, demo_store):
    demo_store.seed_message(
        CALCULUS, sender_id=MEI, sender_name="<b>Mei</b><img src=x onerror=alert(2)>", content="<i>seeded</i>"
    )
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)

    attacks = [
        "<img src=x onerror=alert(1)>",
        "<script>window.__owned = 1; alert(3)</script>",
        '"><svg onload=alert(4)>',
    ]
    for text in attacks:
        await ana.send(text)
    for chat in (ana, juan):
        for text in attacks + ["<i>seeded</i>"]:
            await expect(chat.message_with(text)).to_have_count(1)
        await expect(chat.message(4).get_by_test_id("message-sender")).to_have_text(
            "<b>Mei</b><img src=x onerror=alert(2)>"
        )
        messages = chat.hook("messages")
        for tag in ("img", "script", "svg", "b", "i"):
            await expect(messages.locator(tag)).to_have_count(0)
    await ana.page.wait_for_timeout(500)  # time for an onerror/onload to have fired
    for chat in (ana, juan):
        assert chat.dialogs == []
        assert await chat.page.evaluate("window.__owned") is None
        assert not chat.errors


async def test_older_history_loads_on_scrolling_up(browser, demo_server, demo_store):
    for n in range(1, 121):
        demo_store.seed_message(CALCULUS, sender_id=JUAN, sender_name="Juan Pérez", content=f"note {n}")
    total = 123
    mei = await sign_in_demo(browser, demo_server, MEI)
    await mei.open_group(CALCULUS)

    # The latest page first, scrolled to the newest message.
    await expect(mei.message(total)).to_be_in_viewport()
    await expect(mei.page.locator('[data-testid="message"][data-seq]')).to_have_count(50)
    assert (await mei.shown())[0]["seq"] == total - 49
    await expect(mei.hook("load-older")).to_be_visible()

    for _ in range(10):
        if await mei.message(1).count():
            break
        before = await mei.messages.count()
        await mei.hook("messages").evaluate("el => { el.scrollTop = 0; }")
        await expect(mei.messages).not_to_have_count(before)
    await expect_exactly(mei, await stored_contents(demo_store, CALCULUS))
    await expect(mei.hook("load-older")).to_be_hidden()
    await expect(mei.page.get_by_text("This is the beginning of the conversation.")).to_be_visible()
    await mei.screenshot("history-top.png")


async def test_forced_disconnect_catches_up_without_gaps_or_doubles(browser, demo_server, demo_store):
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)

    # Cut Ana off: no network, and her live connection closed under her.
    await ana.context.set_offline(True)
    await ana.page.evaluate("studyChat.socket.io.engine.close()")
    await expect(ana.hook("connection-state")).to_have_text("reconnecting")

    # Ana writes while offline: pending, not lost.
    await ana.send("written while offline")
    offline_message = ana.message_with("written while offline")
    await expect(offline_message).to_have_attribute("data-pending", "true")

    # Meanwhile Juan talks, and 130 messages arrive that no connection was told about
    # (as if sent through another node): more than one catch-up page, and a gap for Juan.
    await juan.send("while you were away 1")
    await expect(juan.message(4)).to_be_visible()
    for n in range(130):
        demo_store.seed_message(CALCULUS, sender_id=MEI, sender_name="Mei Chen", content=f"backlog {n}")
    await juan.send("while you were away 2")
    await expect(juan.message(135)).to_contain_text("while you were away 2")

    await ana.context.set_offline(False)
    await expect(ana.hook("connection-state")).to_have_text("connected", timeout=30_000)
    await expect(offline_message).to_have_attribute("data-pending", "false")

    contents = await stored_contents(demo_store, CALCULUS)
    assert contents.count("written while offline") == 1
    assert len(contents) == 136
    for chat in (ana, juan):
        await expect_exactly(chat, contents)
    await ana.screenshot("after-reconnect.png")
    assert not ana.errors and not juan.errors


async def test_edits_and_deletes_made_while_offline_show_after_the_reconnect(browser, demo_server, demo_store):
    """Catch-up is by revision: changes to messages the page already shows
    arrive too, without a reload, and a change whose event never came is fetched."""
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)
    for text in ("draft one", "draft two", "draft three"):
        await juan.send(text)
    await expect(ana.message(6)).to_contain_text("draft three")
    messages, _ = await demo_store.get_messages(CALCULUS, limit=10, after_seq=0)
    by_seq = {m["seq"]: m["id"] for m in messages}

    await ana.context.set_offline(True)
    await ana.page.evaluate("studyChat.socket.io.engine.close()")
    await expect(ana.hook("connection-state")).to_have_text("reconnecting")

    # While Ana is away Juan edits an old message and a new one, and deletes another.
    await edit_on_page(juan, 3, "I do, and here they are: notes.pdf")
    await edit_on_page(juan, 4, "draft one, corrected")
    delete = juan.message(5).get_by_test_id("message-delete")
    await delete.click()
    await delete.click()
    await expect(juan.message(5).get_by_test_id("message-content")).to_have_text("message deleted")

    await ana.context.set_offline(False)
    await expect(ana.hook("connection-state")).to_have_text("connected", timeout=30_000)
    await expect(ana.message(3).get_by_test_id("message-content")).to_have_text("I do, and here they are: notes.pdf")
    await expect(ana.message(3)).to_contain_text("(edited)")
    await expect(ana.message(4).get_by_test_id("message-content")).to_have_text("draft one, corrected")
    await expect(ana.message(5).get_by_test_id("message-content")).to_have_text("message deleted")
    await expect(ana.message(6).get_by_test_id("message-content")).to_have_text("draft three")

    # A change no connection was told about (as if its node died before publishing):
    # the next change's revision is two ahead, and the page asks for the one between.
    await demo_store.edit_message(CALCULUS, by_seq[6], JUAN, "draft three, edited quietly")
    await juan.send("after the quiet edit")
    await expect(ana.message(7)).to_contain_text("after the quiet edit")
    await expect(ana.message(6).get_by_test_id("message-content")).to_have_text("draft three, edited quietly")
    latest = await demo_store.latest_rev(CALCULUS)
    assert await ana.page.evaluate("studyChat.state.view.rev") == latest
    assert not ana.errors and not juan.errors


async def edit_on_page(chat, seq: int, text: str) -> None:
    await chat.message(seq).get_by_test_id("message-edit").click()
    box = chat.hook("message-input")
    await box.fill(text)
    await box.press("Enter")
    await expect(chat.message(seq).get_by_test_id("message-content")).to_have_text(text)


async def test_a_send_is_resent_with_its_id_until_stored_and_shown_once(browser, demo_server, demo_store):
    # The store fails the first attempt, and is slower than the page's ack timeout
    # on the second: the page must resend (same client_msg_id) and show one message.
    attempts: list[str] = []
    add_message = demo_store.add_message

    async def flaky_add_message(group_id, **fields):
        attempts.append(fields["client_msg_id"])
        if len(attempts) == 1:
            raise StorageUnavailable("primary stepped down")
        if len(attempts) == 2:
            await asyncio.sleep(1.5)
        return await add_message(group_id, **fields)

    demo_store.add_message = flaky_add_message
    demo_store.add_message_at_once = None  # every send goes through add_message, as on a database
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)
    await ana.page.evaluate("studyChat.state.conn.ackTimeoutMs = 500")

    await ana.send("resent until stored")
    sent = ana.message_with("resent until stored")
    await expect(sent).to_have_attribute("data-pending", "true")
    await expect(sent).to_have_attribute("data-seq", "4")
    await expect(sent).to_have_attribute("data-pending", "false")
    await juan.page.wait_for_timeout(500)  # time for a stray second copy to show up

    assert len(attempts) >= 3 and len(set(attempts)) == 1, attempts
    contents = await stored_contents(demo_store, CALCULUS)
    assert contents.count("resent until stored") == 1
    for chat in (ana, juan):
        await expect_exactly(chat, contents)
    await expect(ana.hook("error")).to_be_hidden()


async def test_non_member_join_shows_the_refusal(browser, demo_server):
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await juan.open_group(CALCULUS)

    join = juan.hook("join-input")
    await join.fill(CHEMISTRY)
    await join.press("Enter")
    await expect(juan.hook("error")).to_have_text("You are not a member of this group.")
    await expect(juan.hook("group-name")).to_have_text("Calculus I")  # still where he was
    await juan.screenshot("join-refused.png")

    await join.fill("64b0000000000000000000ff")
    await join.press("Enter")
    await expect(juan.hook("error")).to_have_text("This group does not exist.")

    await join.fill("not-an-id")
    await join.press("Enter")
    await expect(juan.hook("error")).to_contain_text("group_id: Must be a 24-character hexadecimal id.")

    # A member's join by id works and clears the error.
    await join.fill(CALCULUS.upper())
    await join.press("Enter")
    await expect(juan.hook("error")).to_be_hidden()

    lucia = await sign_in_demo(browser, demo_server, LUCIA)
    await expect(lucia.page.get_by_text("You are not in any study group yet.")).to_be_visible()
    await expect(lucia.hook("group")).to_have_count(0)
    await lucia.hook("join-input").fill(CALCULUS)
    await lucia.hook("join-input").press("Enter")
    await expect(lucia.hook("error")).to_have_text("You are not a member of this group.")
    await expect(lucia.page.locator('[data-testid="message"]')).to_have_count(0)


async def test_edit_and_delete_own_messages(browser, demo_server):
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CALCULUS)
    await juan.open_group(CALCULUS)

    await ana.send("the integral of x is x²")
    mine = ana.message(4)
    await expect(mine).to_have_attribute("data-pending", "false")
    # Only one's own messages can be edited or deleted.
    await expect(juan.message(4).get_by_test_id("message-edit")).to_have_count(0)
    await expect(ana.message(2).get_by_test_id("message-edit")).to_have_count(0)

    await mine.get_by_test_id("message-edit").click()
    box = ana.hook("message-input")
    await expect(box).to_have_value("the integral of x is x²")
    await box.fill("the integral of x is x²/2 + C")
    await box.press("Enter")
    for chat in (ana, juan):
        await expect(chat.message(4).get_by_test_id("message-content")).to_have_text("the integral of x is x²/2 + C")
        await expect(chat.message(4)).to_contain_text("(edited)")

    delete = mine.get_by_test_id("message-delete")
    await delete.click()
    await expect(delete).to_have_text("Confirm delete")
    await delete.click()
    for chat in (ana, juan):
        await expect(chat.message(4).get_by_test_id("message-content")).to_have_text("message deleted")
        await expect(chat.message(4).get_by_test_id("message-edit")).to_have_count(0)
    assert not ana.errors and not juan.errors


async def test_token_sign_in(browser, demo_server, demo_app):
    chat = await open_page(browser, demo_server)
    await chat.enter_token("not-a-token")
    await expect(chat.hook("error")).to_contain_text("Sign-in refused")
    await expect(chat.hook("token-input")).to_be_visible()

    await chat.enter_token(demo_app[VERIFIER].issue(MEI))
    await expect(chat.hook("connection-state")).to_have_text("connected")
    await expect(chat.hook("error")).to_be_hidden()
    await expect(chat.hook("group")).to_have_count(2)


async def test_announcements_and_membership_changes_show_on_the_page(browser, demo_server, demo_app, demo_store):
    import aiohttp
    import jwt

    from server.keys import SETTINGS

    secret = demo_app[SETTINGS].jwt_secret
    service = {"Authorization": "Bearer " + jwt.encode({"sub": "course-platform", "role": "service",
                                                        "exp": 2**31 - 1}, secret, algorithm="HS256")}
    base = str(demo_server.make_url("")).rstrip("/")
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    for chat in (ana, juan):
        await chat.open_group(CALCULUS)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base}/study-groups/{CALCULUS}/messages", headers=service,
                               json={"content": "The exam moves to Friday."})
        assert resp.status == 200
        for chat in (ana, juan):
            notice = chat.message(4)
            await expect(notice).to_have_attribute("data-kind", "system")
            await expect(notice.get_by_test_id("message-sender")).to_have_text("Announcement from course-platform")
            await expect(notice.get_by_test_id("message-content")).to_have_text("The exam moves to Friday.")
            await expect(notice.get_by_test_id("message-edit")).to_have_count(0)
        await juan.screenshot("announcement.png")

        # The platform moves Juan from Calculus to Organic Chemistry.
        demo_store.set_members(CALCULUS, [ANA, MEI])
        demo_store.set_members(CHEMISTRY, [ANA, MEI, JUAN])
        for group in (CALCULUS, CHEMISTRY):
            resp = await http.post(f"{base}/study-groups/{group}/membership-changed", headers=service)
            assert resp.status == 200
    await expect(juan.hook("error")).to_have_text("You are no longer a member of Calculus I.")
    await expect(juan.hook("group-name")).to_have_text("No group open")
    await expect(juan.hook("group")).to_have_count(1)
    await expect(juan.page.locator(f'[data-testid="group"][data-group-id="{CHEMISTRY}"]')).to_be_visible()
    await expect(ana.hook("group-name")).to_have_text("Calculus I")


async def test_the_page_runs_on_the_client_package_and_sends_what_waited_in_order(browser, demo_server, demo_store):
    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.open_group(CALCULUS)
    # The protocol side is clients/js, served at /static/client/ (no copy of its own).
    assert await ana.page.evaluate(
        "import('/static/client/index.js').then((m) => studyChat.state.session instanceof m.ChatSession)")

    await ana.context.set_offline(True)
    await ana.page.evaluate("studyChat.socket.io.engine.close()")
    await expect(ana.hook("connection-state")).to_have_text("reconnecting")
    written = [f"offline, in order {n}" for n in range(1, 7)]
    for text in written:
        await ana.send(text)
    await ana.context.set_offline(False)
    await expect(ana.hook("connection-state")).to_have_text("connected", timeout=30_000)
    for text in written:
        await expect(ana.message_with(text)).to_have_attribute("data-pending", "false")
    contents = await stored_contents(demo_store, CALCULUS)
    assert contents[-len(written):] == written, contents
    await expect_exactly(ana, contents)
    assert not ana.errors


async def test_messages_written_offline_survive_a_reload_and_are_sent_once(browser, demo_server, demo_store):
    """The outbox is saved in the tab (sessionStorage): a reload before the connection came back
    keeps what waited, which is sent once it does, each message once; signing out meanwhile
    asks first, since it would lose them."""
    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.open_group(CALCULUS)

    # No way to the server: every Socket.IO request and WebSocket is refused until this is cleared.
    offline = {"on": True}

    async def websocket(ws) -> None:
        if offline["on"]:
            await ws.close(code=1011, reason="offline")
        else:
            ws.connect_to_server()

    async def polling(route) -> None:
        await (route.abort() if offline["on"] else route.continue_())

    await ana.context.route("**/socket.io/**", polling)
    await ana.context.route_web_socket("**/socket.io/**", websocket)
    await ana.page.evaluate("studyChat.socket.io.engine.close()")
    await expect(ana.hook("connection-state")).to_have_text("reconnecting")
    written = ["before the reload 1", "before the reload 2"]
    for text in written:
        await ana.send(text)
        await expect(ana.message_with(text)).to_have_attribute("data-pending", "true")
    # Signing out now would lose them: the page asks first (this harness declines).
    await ana.hook("sign-out").click()
    for _ in range(100):
        if ana.dialogs:
            break
        await asyncio.sleep(0.05)
    assert ana.dialogs == ["2 messages are not sent yet and will be lost. Sign out anyway?"], ana.dialogs
    await expect(ana.message_with(written[0])).to_have_attribute("data-pending", "true")

    await ana.page.reload()
    await expect(ana.hook("current-user")).not_to_be_empty()  # signed in again from the tab's session
    await expect(ana.hook("connection-state")).not_to_have_text("connected")
    offline["on"] = False
    await expect(ana.hook("connection-state")).to_have_text("connected", timeout=30_000)
    await ana.open_group(CALCULUS)
    for text in written:
        await expect(ana.message_with(text)).to_have_attribute("data-pending", "false")
    contents = await stored_contents(demo_store, CALCULUS)
    assert contents[-len(written):] == written, contents
    assert all(contents.count(text) == 1 for text in written), contents
    await expect_exactly(ana, contents)
    # Stored: nothing waits any more, so a further reload sends nothing again.
    assert await ana.page.evaluate(f"sessionStorage.getItem('studychat.outbox.{ANA}')") is None
