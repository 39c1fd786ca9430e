"""The bundled page is usable by everyone (WCAG 2.1 AA), in headless Chromium:
axe-core on every screen and open picker in both colour schemes and at narrow
widths, a keyboard-only session, what a screen reader hears (one polite live
region, batched), the message list's structure, and reduced motion."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Page, expect

from server.demo import ANA, JUAN, MEI
from server.keys import VERIFIER
from storage import conversation
from tests.support.a11y import assert_accessible
from tests.support.browser import (
    TIMEOUT_MS,
    ChatPage,
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
NAMES = {ANA: "Ana García", JUAN: "Juan Pérez", MEI: "Mei Chen"}
LONG_CONTENT = (
    "¿Qué es $\\sum_{i=1}^{n} x_i^2 + \\int_0^1 f(x)\\,dx$? **Importante** `f(x) = x^2` "
    "https://example.org/una/ruta/muy/larga/que/no/tiene/espacios/en/ningun/sitio/de/verdad"
)


def seed(store, sender: str, content: str, **fields):
    return store.seed_message(CALCULUS, sender_id=sender, sender_name=NAMES[sender], content=content, **fields)


async def seed_every_kind(store) -> dict:
    """A group with a message of every kind the page draws: a pinned open question with math,
    code and a long link, a reply with its quote, a mention of Ana, reactions, an edited and a
    deleted message, and an announcement."""
    question = seed(store, MEI, LONG_CONTENT, kind="question")
    await store.pin(CALCULUS, question["id"], MEI)
    reply = seed(store, JUAN, "La suma da n(n+1)(2n+1)/6\n```\nsum(i*i for i in range(1, n + 1))\n```",
                 reply_to=conversation.reply_snapshot(question))
    await store.react(CALCULUS, reply["id"], MEI, "👍", True)
    seed(store, JUAN, "@Ana García ¿lo revisas?", mentions=[ANA])
    edited = seed(store, MEI, "Borrador")
    await store.edit_message(CALCULUS, edited["id"], MEI, "Versión final $$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$")
    gone = seed(store, JUAN, "me equivoqué")
    await store.delete_message(CALCULUS, gone["id"], JUAN)
    store.seed_message(CALCULUS, sender_id=None, sender_name="course-platform", content="Exam moved to Friday.",
                       kind="system")
    return question


async def focus_state(page: Page) -> dict:
    return await page.evaluate("""() => {
        const el = document.activeElement;
        const style = getComputedStyle(el);
        return {
            body: el === document.body || el === null,
            testid: el.dataset.testid || null, id: el.id, tag: el.tagName, text: (el.textContent || "").slice(0, 60),
            outline: style.outlineStyle, outlineWidth: parseFloat(style.outlineWidth), visible: el.matches(":focus-visible"),
        };
    }""")


async def key(chat: ChatPage, *keys: str) -> dict:
    """Press keys; after each, the focus is on something (not the page's body) and shows it."""
    state: dict = {}
    for name in keys:
        await chat.page.keyboard.press(name)
        state = await focus_state(chat.page)
        assert not state["body"], f"the focus was lost to the page's body after {name}"
        assert state["visible"] and state["outline"] != "none" and state["outlineWidth"] >= 2, (
            f"no visible focus after {name}: {state}")
    return state


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_axe_finds_no_serious_violation_on_any_screen(browser, demo_app, demo_server, demo_store, scheme):
    await seed_every_kind(demo_store)
    page = await open_page(browser, demo_server)
    await page.page.emulate_media(color_scheme=scheme)
    await assert_accessible(page.page, "sign-in")
    await page.hook("token-sign-in").click()  # no token: the error bar
    await expect(page.hook("error")).to_have_text("Paste a token first.")
    await assert_accessible(page.page, "sign-in with an error")

    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.page.emulate_media(color_scheme=scheme)
    await assert_accessible(ana.page, "signed-in (no group open)")
    await ana.open_group(CALCULUS)
    await expect(ana.hook("pinned-bar")).to_be_visible()
    await ana.send("Lo miro ahora")
    await expect(ana.page.locator('[data-testid="message"][data-pending="true"]')).to_have_count(0)
    await assert_accessible(ana.page, "group with every kind of message")

    reply = ana.messages.filter(has_text="La suma da")
    await reply.get_by_test_id("react-button").click()
    await expect(reply.get_by_test_id("reaction-picker")).to_be_visible()
    await assert_accessible(ana.page, "reaction picker")
    await ana.page.keyboard.press("Escape")

    await reply.get_by_test_id("reply-button").click()
    await ana.hook("ask-question-toggle").click()
    await ana.hook("message-input").press_sequentially("@Ju")
    await expect(ana.hook("mention-suggestion")).to_have_count(1)
    await assert_accessible(ana.page, "composer replying, asking, with mention suggestions")
    await ana.hook("message-input").fill("")
    await ana.page.keyboard.press("Escape")

    mine = ana.message_with("Lo miro ahora")
    await mine.get_by_test_id("message-edit").click()
    await expect(mine).to_have_class(re.compile("editing"))
    await assert_accessible(ana.page, "editing a message")
    await ana.page.keyboard.press("Escape")

    await ana.hook("filter-unanswered").click()
    await expect(ana.hook("unanswered-question")).to_have_count(1)
    await assert_accessible(ana.page, "unanswered questions")
    await ana.hook("search-input").fill("suma")
    await ana.hook("search-input").press("Enter")
    await expect(ana.hook("search-result")).to_have_count(1)
    await assert_accessible(ana.page, "search results")

    # Offline: the Reconnect button, and a send that waits for the connection.
    await ana.page.evaluate("window.studyChat.socket.disconnect()")
    await expect(ana.hook("reconnect")).to_be_visible()
    await ana.send("Cuando vuelva la conexión")
    await expect(ana.page.locator('[data-testid="message"][data-pending="true"]')).to_have_count(1)
    await assert_accessible(ana.page, "disconnected, with a send waiting")
    await ana.hook("reconnect").click()
    await expect(ana.page.locator('[data-testid="message"][data-pending="true"]')).to_have_count(0)

    # A session that ends soon says so in its bar.
    mei = await open_page(browser, demo_server)
    await mei.page.emulate_media(color_scheme=scheme)
    await mei.enter_token(demo_app[VERIFIER].issue(MEI, ttl_seconds=30))
    await expect(mei.hook("session-status")).to_contain_text("Your session ends at")
    await mei.open_group(CALCULUS)
    await assert_accessible(mei.page, "session ending")
    for person in (page, ana, mei):
        assert not person.errors


@pytest.mark.parametrize(("width", "height"), [(320, 568), (640, 360)], ids=["320px", "200% zoom"])
async def test_narrow_and_zoomed_windows_need_no_sideways_scrolling(browser, demo_server, demo_store, width, height):
    """320 CSS px is WCAG's reflow width; 640 x 360 is a 1280 x 720 window at 200 % zoom."""
    await seed_every_kind(demo_store)
    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.page.set_viewport_size({"width": width, "height": height})
    await ana.open_group(CALCULUS)
    await ana.send("Se lee bien también en el móvil")
    await expect(ana.message_with("Se lee bien también en el móvil")).to_have_attribute("data-pending", "false")
    sizes = await ana.page.evaluate("""() => {
        const list = document.querySelector("ol.messages"), scroller = document.getElementById("scroller");
        return {page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
                scroller: [scroller.scrollWidth, scroller.clientWidth, scroller.clientHeight],
                list: [list.scrollWidth, list.clientWidth]};
    }""")
    assert sizes["page"][0] <= sizes["page"][1], f"the page scrolls sideways: {sizes}"
    assert sizes["scroller"][0] <= sizes["scroller"][1], f"the message list scrolls sideways: {sizes}"
    assert sizes["list"][0] <= sizes["list"][1], f"the message list scrolls sideways: {sizes}"
    assert sizes["scroller"][2] >= 150, f"too little room left for the messages: {sizes}"
    # The controls are all within the window's width (read at once: the group list is redrawn as counts change).
    boxes = await ana.page.evaluate("""(ids) => ids.map((id) => {
        const r = document.querySelector(`[data-testid="${id}"]`).getBoundingClientRect();
        return [id, r.left, r.right, r.width];
    })""", ["message-input", "send-button", "attach-button", "search-input", "group"])
    for testid, left, right, box_width in boxes:
        assert box_width > 0 and left >= 0 and right <= width, (testid, left, right)
    await assert_accessible(ana.page, f"group at {width} x {height}")


async def test_a_keyboard_alone_signs_in_chooses_a_group_sends_replies_reacts_and_searches(browser, demo_server):
    ana = await open_page(browser, demo_server)
    # Sign in: the demo user picker is the first stop; Ana is the first demo user.
    await key(ana, "Tab")
    await expect(ana.hook("demo-user")).to_be_focused()
    await expect(ana.hook("demo-user")).to_have_value(ANA)
    await key(ana, "Tab")
    await expect(ana.hook("demo-sign-in")).to_be_focused()
    await key(ana, "Enter")
    await expect(ana.hook("connection-state")).to_have_text("connected")
    await expect(ana.page.locator("#groups-title")).to_be_focused()

    # Choose a group: once the list has come (it is asked for after the connection opens), the
    # next stop is the first group; opening it puts the focus in the composer.
    calculus = ana.page.locator(f'[data-testid="group"][data-group-id="{CALCULUS}"]')
    await expect(calculus).to_be_visible()
    await key(ana, "Tab")
    await expect(calculus).to_be_focused()
    await key(ana, "Enter")
    await expect(ana.hook("group-name")).to_have_text("Calculus I")
    await expect(ana.hook("message-input")).to_be_focused()

    # Send: Enter sends and the focus stays for the next message.
    await ana.page.keyboard.type("Hola, ¿alguien tiene los apuntes?")
    await key(ana, "Enter")
    await expect(ana.message_with("Hola, ¿alguien tiene los apuntes?")).to_have_attribute("data-pending", "false")
    await expect(ana.hook("message-input")).to_be_focused()

    # Reply: back into the list (its newest message's buttons), Escape to the message,
    # up to Juan's, Tab to its Reply.
    await key(ana, "Shift+Tab", "Escape")
    newest = ana.message_with("Hola, ¿alguien tiene los apuntes?")
    await expect(newest).to_be_focused()
    await key(ana, "ArrowUp")
    juans = ana.message_with("I do, I'll share them after class.")
    await expect(juans).to_be_focused()
    await key(ana, "Tab")
    await expect(juans.get_by_test_id("reply-button")).to_be_focused()
    await key(ana, "Enter")
    await expect(ana.hook("reply-banner")).to_contain_text("Juan Pérez")
    await expect(ana.hook("message-input")).to_be_focused()
    await ana.page.keyboard.type("¡Gracias, Juan!")
    await key(ana, "Enter")
    reply = ana.message_with("¡Gracias, Juan!")
    await expect(reply.get_by_test_id("reply-quote")).to_contain_text("Juan Pérez")

    # The quote (the reply's last control) opens the original: the focus goes to it.
    await key(ana, "Shift+Tab")
    await expect(reply.get_by_test_id("reply-quote")).to_be_focused()
    await key(ana, "Enter")
    await expect(juans).to_be_focused()

    # React: Tab to React, Enter opens the picker on its first emoji, Enter picks it;
    # the focus is back on React once the message shows the reaction.
    await key(ana, "Tab", "Tab")
    await expect(juans.get_by_test_id("react-button")).to_be_focused()
    await key(ana, "Enter")
    await expect(juans.get_by_test_id("reaction-picker").get_by_role("button").first).to_be_focused()
    await key(ana, "Enter")
    await expect(juans.get_by_test_id("reaction-chip")).to_have_text("👍 1")
    await expect(juans.get_by_test_id("react-button")).to_be_focused()

    # Search: back up the page to the search box, Enter, then into the results; a result
    # opens its message with the focus on it.
    for _ in range(40):
        if await ana.hook("search-input").evaluate("el => el === document.activeElement"):
            break
        await key(ana, "Shift+Tab")
    await expect(ana.hook("search-input")).to_be_focused()
    await ana.page.keyboard.type("apuntes")
    await key(ana, "Enter")
    await expect(ana.page.locator("#panel-title")).to_be_focused()
    await key(ana, "Tab")
    await expect(ana.page.get_by_role("button", name="Close list")).to_be_focused()
    await key(ana, "Tab")
    await expect(ana.hook("search-result").first).to_be_focused()
    await key(ana, "Enter")
    await expect(newest).to_be_focused()
    # Escape from a list closes it and goes back to where it was opened from.
    await ana.hook("search-input").focus()
    await key(ana, "Enter")
    await expect(ana.page.locator("#panel-title")).to_be_focused()
    await key(ana, "Escape")
    await expect(ana.page.locator("#panel")).to_be_hidden()
    await expect(ana.hook("search-input")).to_be_focused()
    assert not ana.errors and not ana.dialogs


async def announcements(chat: ChatPage) -> list[str]:
    return await chat.page.evaluate("window.heard")


async def listen(chat: ChatPage) -> None:
    """Record every text the announcer's live region is given."""
    await chat.page.evaluate("""() => {
        window.heard = [];
        const region = document.querySelector('[data-testid="announcer"]');
        new MutationObserver(() => { if (region.textContent) window.heard.push(region.textContent); })
            .observe(region, {childList: true, characterData: true, subtree: true});
    }""")


async def test_a_screen_reader_hears_new_messages_batched_and_typing_once(browser, demo_server):
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    for person in (ana, juan):
        await person.open_group(CALCULUS)
    region = ana.hook("announcer")
    assert await region.get_attribute("aria-live") == "polite"
    # The typing line is seen, not a live region of its own; the group's history was not read out.
    assert await ana.hook("typing").evaluate("el => el.closest('[aria-live], [role=status], [role=log], [role=alert]')") is None
    await expect(region).to_have_text("Juan Pérez is online.")  # he opened the group after her
    await listen(ana)

    async def juan_sends(*contents: str) -> None:
        await juan.page.evaluate("""([group, contents]) => {
            for (const content of contents) {
                window.studyChat.socket.emit("send_message", {group_id: group, content, client_msg_id: crypto.randomUUID()});
            }
        }""", [CALCULUS, list(contents)])

    await juan_sends("¿Repasamos la regla de la cadena?")
    await expect(region).to_have_text("Juan Pérez: ¿Repasamos la regla de la cadena?")
    await ana.send("Sí, a las cinco")  # her own message is not read back to her
    await expect(juan.message_with("Sí, a las cinco")).to_be_visible()

    # A burst of 12 messages is one announcement (two if it straddles a batch), not twelve.
    await juan_sends(*(f"Paso {i}" for i in range(1, 13)))
    await expect(ana.message_with("Paso 12")).to_be_visible()
    await expect(region).to_contain_text("Latest, Juan Pérez: Paso 12")
    heard = await announcements(ana)
    burst = heard[1:]
    assert 1 <= len(burst) <= 2, heard
    counts = [int(m.group(1)) if (m := re.match(r"(\d+) new messages from Juan Pérez\.", text)) else 1 for text in burst]
    assert sum(counts) == 12, heard
    assert not any("Sí, a las cinco" in text for text in heard)

    # Typing for a few seconds (an event every 2 s) is said once; the line shows it meanwhile.
    box = juan.hook("message-input")
    await box.click()
    await box.press_sequentially("estoy escribiendo algo largo", delay=180)
    await expect(ana.hook("typing")).to_have_text("Juan Pérez is typing…")
    await asyncio.sleep(1.6)  # the batch that would carry a second one
    typing = [text for text in await announcements(ana) if "is typing" in text]
    assert typing == ["Juan Pérez is typing."], await announcements(ana)

    # Someone coming online is said too.
    mei = await sign_in_demo(browser, demo_server, MEI)
    await mei.open_group(CALCULUS)
    await expect(region).to_contain_text("Mei Chen is online.")
    assert not ana.errors


async def test_the_message_list_reads_as_a_list_with_each_sender_and_time(browser, demo_server, demo_store):
    await seed_every_kind(demo_store)
    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.open_group(CALCULUS)
    assert await ana.page.evaluate("document.documentElement.lang") == "en"
    listing = ana.page.get_by_role("list", name="Messages in Calculus I")
    await expect(listing).to_be_visible()
    count = await ana.messages.count()
    items = listing.get_by_role("listitem")
    await expect(items).to_have_count(count)
    for i in range(count):
        item = items.nth(i)
        sender = await item.get_by_test_id("message-sender").text_content()
        time = await item.get_by_test_id("message-time").text_content()
        assert sender and re.fullmatch(r"\d{2}:\d{2}", time or ""), (sender, time)
        snapshot = await item.aria_snapshot()
        assert sender in snapshot and time in snapshot, snapshot
    # Counts in the group list are words, not bare numbers.
    group = ana.page.locator(f'[data-testid="group"][data-group-id="{CALCULUS}"]')
    await ana.page.locator('[data-testid="group"]').nth(1).click()
    await expect(group).to_have_accessible_name(re.compile(r"^Calculus I(, \d+ unread)?(, \d+ mentions? of you)?$"))


@pytest.mark.parametrize("motion", ["no-preference", "reduce"])
async def test_the_highlight_of_an_opened_message_moves_only_without_reduced_motion(browser, demo_server, demo_store,
                                                                                    motion):
    question = await seed_every_kind(demo_store)
    ana = await sign_in_demo(browser, demo_server, ANA)
    await ana.page.emulate_media(reduced_motion=motion)
    await ana.open_group(CALCULUS)
    await ana.messages.filter(has_text="La suma da").get_by_test_id("reply-quote").click()
    target = ana.message(question["seq"])
    await expect(target).to_be_focused()
    await expect(target).to_have_class(re.compile("highlight"))
    animations = await ana.page.evaluate("document.getAnimations().length")
    assert (animations == 0) == (motion == "reduce"), animations


async def test_a_busy_batch_is_summed_up_not_read_out_name_by_name(browser, demo_server):
    chat = await open_page(browser, demo_server)
    said = await chat.page.evaluate("""async () => {
        const { Announcer, BATCH_MS } = await import("/static/announcer.js");
        const region = document.createElement("div");
        const announcer = new Announcer(region);
        for (const name of ["Ana", "Bea", "Carla", "Dani", "Eva"]) announcer.presence(name, true);
        announcer.presence("Fede", false);
        announcer.message("Ana", "uno");
        announcer.message("Bea", "dos", true);
        announcer.typing("u1", "Carla");
        announcer.typing("u1", "Carla");
        await new Promise((resolve) => setTimeout(resolve, BATCH_MS + 200));
        return region.textContent;
    }""")
    assert said == (
        "2 new messages from Ana and Bea, 1 mentioning you. Latest, Bea mentioned you: dos "
        "Carla is typing. 5 people came online. Fede went offline."
    )


@pytest.mark.timeout(180)  # a 7 MB page: axe takes its time over it on a loaded machine
async def test_the_api_documentation_page_is_accessible_with_its_panels_open(browser, demo_server):
    """/docs (built from docs/asyncapi.yaml by `make api-docs`): axe with every panel open,
    keyboard-operable panels, and nothing fetched from anywhere else."""
    context = await browser.new_context()
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(str(demo_server.make_url("/docs")))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("2.0.0")
    await assert_accessible(page, "/docs, as it opens")
    # Every disclosure button says whether its panel is open, and says it again when toggled.
    unmarked = "Array.from(document.querySelectorAll('main button')).filter(b => b.querySelector(':scope > svg')" \
               " && !b.hasAttribute('aria-expanded')).length"
    assert await page.evaluate(unmarked) == 0
    toggle = page.locator("main button[aria-expanded]:visible").first
    await expect(toggle).to_be_visible()
    before = await toggle.get_attribute("aria-expanded")
    after = "true" if before == "false" else "false"
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", after)
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", before or "")
    # Open panels (payloads, replies, schemas): the first 25 toggles as they appear.
    toggles = page.locator("main button[type='button']:visible")
    for n in range(25):
        if n >= await toggles.count():
            break
        await toggles.nth(n).click()
    await assert_accessible(page, "/docs, panels open")
    # A panel opens from the keyboard: more of the page shows.
    shown = await page.locator("main :visible").count()
    toggle = page.locator("main button[type='button']:visible").last
    await toggle.focus()
    await page.keyboard.press("Enter")
    for _ in range(50):
        if await page.locator("main :visible").count() != shown:
            break
        await page.wait_for_timeout(100)
    assert await page.locator("main :visible").count() != shown
    origin = str(demo_server.make_url("/"))
    assert [url for url in requests if not url.startswith(origin)] == []
    assert errors == []
    await context.close()  # checked above, with its panels open: not again at teardown
