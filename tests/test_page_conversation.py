"""The bundled page's conversation features, in headless Chromium with two people:
replies and their quotes, mentions, reactions, pins, questions with accepted
answers, the unanswered list, search, and Markdown-lite with math that never
runs anyone's script."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from server.demo import ANA, JUAN, MEI
from storage import conversation
from tests.support.browser import TIMEOUT_MS, browser, demo_app, demo_server, demo_store, sign_in_demo

pytestmark = pytest.mark.browser
expect.set_options(timeout=TIMEOUT_MS)

CALCULUS = "64b0000000000000000000a1"
CHEMISTRY = "64b0000000000000000000a2"


async def both(browser, demo_server, group: str = CALCULUS):
    """Ana and Juan, signed in, with the group open."""
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    for person in (ana, juan):
        await person.open_group(group)
    return ana, juan


def seed(store, sender: str, content: str, group: str = CALCULUS, **fields):
    names = {ANA: "Ana García", JUAN: "Juan Pérez", MEI: "Mei Chen"}
    return store.seed_message(group, sender_id=sender, sender_name=names[sender], content=content, **fields)


async def test_a_reply_shows_its_quote_and_the_quote_opens_the_original(browser, demo_server, demo_store):
    original = seed(demo_store, MEI, "Examen parcial: viernes 10:00, aula 3")
    for i in range(120):  # the original is pages away from the newest messages
        seed(demo_store, JUAN, f"relleno {i}")
    ana, juan = await both(browser, demo_server)

    newest = ana.message_with("relleno 119")
    await newest.hover()
    await newest.get_by_test_id("reply-button").click()
    await expect(ana.hook("reply-banner")).to_contain_text("Juan Pérez: relleno 119")
    await ana.send("¡Gracias!")
    reply = juan.message_with("¡Gracias!")
    await expect(reply.get_by_test_id("reply-quote")).to_contain_text("Juan Pérez")
    await expect(reply.get_by_test_id("reply-quote")).to_contain_text("relleno 119")
    await expect(ana.hook("reply-banner")).to_be_hidden()

    # A reply to the old message (sent elsewhere): its quote loads older pages and shows it.
    snapshot = conversation.reply_snapshot(original)
    seed(demo_store, ANA, "¿Sigue siendo el viernes?", reply_to=snapshot)
    await juan.page.reload()
    await juan.open_group(CALCULUS)
    await expect(juan.message(original["seq"])).to_have_count(0)
    await juan.message_with("¿Sigue siendo el viernes?").get_by_test_id("reply-quote").click()
    target = juan.message(original["seq"])
    await expect(target).to_be_visible()
    await expect(target).to_be_focused()
    await expect(target).to_have_class(re.compile("highlight"))


async def test_mentions_come_from_the_autocomplete_and_highlight_for_the_mentioned(browser, demo_server):
    ana, juan = await both(browser, demo_server)
    box = ana.hook("message-input")
    await box.click()
    await box.press_sequentially("@Ju")
    suggestion = ana.hook("mention-suggestion")
    await expect(suggestion).to_have_text(["Juan Pérez"])
    await box.press("Enter")  # picks the suggestion, does not send
    await expect(box).to_have_value("@Juan Pérez ")
    await box.press_sequentially("mira la hoja 3")
    await box.press("Enter")
    mentioned = juan.message_with("@Juan Pérez mira la hoja 3")
    await expect(mentioned).to_have_attribute("data-mentions-me", "true")
    await expect(ana.message_with("@Juan Pérez mira la hoja 3")).to_have_attribute("data-mentions-me", "false")
    # Mei was not mentioned: her own copy is not highlighted. Nobody is suggested for "@zz".
    await box.press_sequentially("@zz")
    await expect(suggestion).to_have_count(0)


async def test_suggestions_stay_open_when_the_box_gets_the_focus_back_at_once(browser, demo_server):
    ana, _ = await both(browser, demo_server)
    box = ana.hook("message-input")
    await box.click()
    await ana.hook("ask-question-toggle").click()  # the box loses the focus...
    await box.press_sequentially("@Ju")  # ...and has it back within the moment its suggestions wait
    await ana.page.wait_for_timeout(400)
    await expect(ana.hook("mention-suggestion")).to_have_text(["Juan Pérez"])


async def test_reactions_from_the_picker_and_the_chips_are_shared(browser, demo_server):
    ana, juan = await both(browser, demo_server)
    target = ana.message_with("I do, I'll share them after class.")
    await target.hover()
    await target.get_by_test_id("react-button").click()
    picker = target.get_by_test_id("reaction-picker")
    await expect(picker).to_be_visible()
    await picker.get_by_role("button", name="React with thumbs up").click()
    await expect(picker).to_be_hidden()
    chip = ana.message_with("I do, I'll share them after class.").get_by_test_id("reaction-chip")
    await expect(chip).to_have_text("👍 1")
    await expect(chip).to_have_attribute("aria-pressed", "true")
    theirs = juan.message_with("I do, I'll share them after class.").get_by_test_id("reaction-chip")
    await expect(theirs).to_have_text("👍 1")
    await expect(theirs).to_have_attribute("aria-pressed", "false")
    await theirs.click()  # Juan adds his to the same emoji
    await expect(chip).to_have_text("👍 2")
    await expect(juan.message_with("I do, I'll share them after class.").get_by_test_id("reaction-chip")).to_have_attribute(
        "aria-pressed", "true")
    await chip.click()  # Ana takes hers back
    await expect(juan.message_with("I do, I'll share them after class.").get_by_test_id("reaction-chip")).to_have_text(
        "👍 1")
    # The picker works from the keyboard too, and Escape closes it.
    await target.get_by_test_id("react-button").focus()
    await ana.page.keyboard.press("Enter")
    await expect(target.get_by_test_id("reaction-picker")).to_be_visible()
    await ana.page.keyboard.press("Escape")
    await expect(target.get_by_test_id("reaction-picker")).to_have_count(0)
    await expect(target.get_by_test_id("react-button")).to_be_focused()


async def test_pins_show_in_the_bar_for_everyone_and_open_the_message(browser, demo_server, demo_store):
    exam = seed(demo_store, MEI, "Examen: viernes 10:00, aula 3")
    for i in range(80):
        seed(demo_store, JUAN, f"charla {i}")
    ana, juan = await both(browser, demo_server)
    await expect(ana.hook("pinned-bar")).to_be_hidden()
    newest = ana.message_with("charla 79")
    await newest.hover()
    await newest.get_by_test_id("pin-button").click()
    await expect(juan.hook("pinned-bar")).to_contain_text("charla 79")
    # A pin of an old message (made elsewhere) shows too, and opens it in context.
    demo_store_pin = await demo_store.pin(CALCULUS, exam["id"], MEI)
    assert demo_store_pin is not None
    await juan.page.reload()
    await juan.open_group(CALCULUS)
    bar = juan.hook("pinned-bar")
    await expect(bar.get_by_test_id("pinned-message")).to_have_count(2)
    await bar.get_by_test_id("pinned-message").filter(has_text="Examen").click()
    await expect(juan.message(exam["seq"])).to_be_focused()
    # Unpinning empties the bar for both.
    pinned = ana.message_with("charla 79")
    await pinned.hover()
    await expect(pinned.get_by_test_id("pin-button")).to_have_text("Unpin")
    await pinned.get_by_test_id("pin-button").click()
    await expect(juan.hook("pinned-bar").get_by_test_id("pinned-message")).to_have_count(1)


async def test_a_question_gets_an_accepted_answer_and_leaves_the_unanswered_list(browser, demo_server):
    ana, juan = await both(browser, demo_server)
    toggle = ana.hook("ask-question-toggle")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "true")
    await ana.send("¿Cómo se deriva x³?")
    await expect(toggle).to_have_attribute("aria-pressed", "false")  # for that message only
    question = juan.message_with("¿Cómo se deriva x³?")
    await expect(question).to_have_attribute("data-kind", "question")
    await expect(question.get_by_test_id("question-state")).to_have_text("Question · open")

    await juan.hook("filter-unanswered").click()
    await expect(juan.hook("unanswered-question")).to_have_count(1)
    await expect(juan.hook("unanswered-question")).to_contain_text("¿Cómo se deriva x³?")

    await question.hover()
    await question.get_by_test_id("reply-button").click()
    await juan.send("3x², con la regla de la potencia")
    answer = ana.message_with("3x², con la regla de la potencia")
    await expect(answer.get_by_test_id("reply-quote")).to_contain_text("¿Cómo se deriva x³?")
    # Only the asker sees Accept; Juan does not on his own answer.
    await expect(juan.message_with("3x², con la regla de la potencia").get_by_test_id("accept-answer")).to_have_count(0)
    await answer.hover()
    await answer.get_by_test_id("accept-answer").click()
    await expect(juan.message_with("¿Cómo se deriva x³?").get_by_test_id("question-state")).to_have_text(
        "Question · answered")
    await expect(juan.message_with("3x², con la regla de la potencia").get_by_test_id("accepted-answer")).to_be_visible()
    await expect(answer.get_by_test_id("accept-answer")).to_have_attribute("aria-pressed", "true")

    await juan.hook("filter-unanswered").click()  # closes the list
    await juan.hook("filter-unanswered").click()  # and reads it again
    await expect(juan.hook("unanswered-question")).to_have_count(0)
    await expect(juan.page.locator("#panel-list")).to_contain_text("Every question has an answer.")


async def test_search_results_open_the_message_in_its_group(browser, demo_server, demo_store):
    old = seed(demo_store, MEI, "Las derivadas parciales resueltas están en la carpeta compartida")
    for i in range(120):
        seed(demo_store, JUAN, f"otra cosa {i}")
    seed(demo_store, ANA, "Organic notes: la resolución del ejercicio 4", group=CHEMISTRY)
    ana = await sign_in_demo(browser, demo_server, ANA)
    juan = await sign_in_demo(browser, demo_server, JUAN)
    await ana.open_group(CHEMISTRY)
    await juan.open_group(CALCULUS)

    search = ana.hook("search-input")
    await search.fill("DERIVADAS resuel")
    await search.press("Enter")
    result = ana.hook("search-result")
    await expect(result).to_have_count(1)
    await expect(result).to_contain_text("Calculus I")
    await result.click()  # opens Calculus and loads older pages until the message is there
    await expect(ana.hook("group-name")).to_have_text("Calculus I")
    await expect(ana.message(old["seq"])).to_be_focused()

    # Accents and case do not matter; Juan is not in Organic Chemistry and finds nothing there.
    await juan.hook("search-input").fill("resolucion")
    await juan.hook("search-input").press("Enter")
    await expect(juan.page.locator("#panel-list")).to_contain_text("No message matches.")
    await juan.hook("search-input").fill("carpeta")
    await juan.hook("search-input").press("Enter")
    await expect(juan.hook("search-result")).to_have_count(1)


async def test_markdown_and_math_render_and_nothing_runs_script(browser, demo_server):
    ana, juan = await both(browser, demo_server)
    hostile = (
        "**negrita** y *cursiva* con `x = 1` y $x^2 + \\frac{1}{2}$ "
        "[apuntes](https://example.org/notas) [malo](javascript:alert(1)) "
        "<img src=x onerror=\"window.pwned=1\"> $\\href{javascript:alert(2)}{clic}$"
    )
    await ana.hook("message-input").fill(hostile)
    await ana.hook("message-input").press("Enter")
    await ana.hook("message-input").fill("```\n<script>window.pwned=2</script>\n```\n$$\\int_0^1 x\\,dx$$")
    await ana.hook("message-input").press("Enter")
    content = juan.messages.filter(has_text="negrita").get_by_test_id("message-content")
    await expect(content.locator("strong")).to_have_text("negrita")
    await expect(content.locator("em")).to_have_text("cursiva")
    await expect(content.locator("code")).to_have_text("x = 1")
    formulas = content.get_by_test_id("math")
    await expect(formulas).to_have_count(2)
    await expect(formulas.first.locator(".katex")).to_be_attached()
    link = content.get_by_role("link", name="apuntes")
    await expect(link).to_have_attribute("href", "https://example.org/notas")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b.*\bnoreferrer\b"))
    # No other link: not the javascript: one, not KaTeX's \href (trust is off).
    await expect(content.locator("a")).to_have_count(1)
    await expect(content.locator("img")).to_have_count(0)
    await expect(content).to_contain_text('<img src=x onerror="window.pwned=1">')
    block = juan.messages.filter(has_text="window.pwned=2").get_by_test_id("message-content")
    await expect(block.locator("pre code")).to_have_text("<script>window.pwned=2</script>")
    await expect(block.locator(".math-display .katex-display")).to_be_attached()
    await expect(block.locator("script")).to_have_count(0)
    for person in (ana, juan):
        assert await person.page.evaluate("window.pwned") is None
        assert person.dialogs == [] and person.errors == []
