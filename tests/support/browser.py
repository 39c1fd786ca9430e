"""Fixtures for the page tests: the demo app on a local port, and headless Debian Chromium.

Playwright's own browser download is not used: the tests drive the system's
``/usr/bin/chromium`` (Debian's ``chromium`` package), through Playwright's
async API so that the server and the browser share the test's event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from server.app import create_app
from server.config import Settings
from server.keys import STORE
from storage.memory import MemoryStore
from tests.support.a11y import assert_accessible

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
VIEWPORT = {"width": 1180, "height": 720}
TIMEOUT_MS = 15_000


@pytest.fixture
def demo_app() -> web.Application:
    """The ``--demo`` application (seeded users and groups), not yet started."""
    return create_app(Settings.from_env({}, demo=True))


@pytest.fixture
def demo_store(demo_app: web.Application) -> MemoryStore:
    """The demo app's embedded store, for seeding messages behind the page's back."""
    store = demo_app[STORE]
    assert isinstance(store, MemoryStore)
    return store


@pytest.fixture
async def demo_server(aiohttp_server, demo_app: web.Application) -> TestServer:
    """The demo app served on a free port of 127.0.0.1."""
    return await aiohttp_server(demo_app, host="127.0.0.1")


@pytest.fixture
async def browser(demo_server: TestServer, request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """Headless Chromium; it needs ``demo_server`` only to be closed before the server stops,
    so that no open connection holds up the server's shutdown. Every page still open when a
    passing test ends is checked with axe-core: whatever screen a test leaves, it is accessible."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}; the browser tests need Debian's chromium: "
            f"run `{INSTALL_HINT}` (the project's test command does), or set CHROMIUM_PATH.",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
            if not getattr(request.node, "failed_call", False):
                for context in browser.contexts:
                    for page in context.pages:
                        if not page.is_closed():
                            await assert_accessible(page, f"last screen of {request.node.name}")
        finally:
            await browser.close()


@dataclass
class ChatPage:
    """One signed-in user in their own browser context, driven through the data-testid hooks."""

    context: BrowserContext
    page: Page
    dialogs: list[str]
    errors: list[str]

    def hook(self, testid: str):
        return self.page.get_by_test_id(testid)

    async def enter_token(self, token: str) -> None:
        """Sign in on the form with a token, as a person pastes it and presses Enter."""
        await self.hook("token-input").fill(token)
        await self.hook("token-input").press("Enter")

    @property
    def messages(self):
        return self.hook("message")

    def message(self, seq: int):
        return self.page.locator(f'[data-testid="message"][data-seq="{seq}"]')

    def message_with(self, content: str):
        return self.messages.filter(
            has=self.page.get_by_test_id("message-content").get_by_text(content, exact=True)
        )

    async def open_group(self, group_id: str) -> None:
        await self.page.locator(f'[data-testid="group"][data-group-id="{group_id}"]').click()
        await expect(self.page.locator(f'ol.messages[data-group-id="{group_id}"]')).to_be_attached()

    async def send(self, text: str) -> None:
        """Type like a person (input events, so typing is announced) and press Enter."""
        box = self.hook("message-input")
        await box.click()
        await box.press_sequentially(text)
        await box.press("Enter")

    async def shown(self) -> list[dict]:
        """Every message on the page, in page order."""
        return await self.page.eval_on_selector_all(
            '[data-testid="message"]',
            """nodes => nodes.map(n => ({
                seq: n.dataset.seq ? Number(n.dataset.seq) : null,
                pending: n.dataset.pending,
                sender: n.querySelector('[data-testid=message-sender]').textContent,
                content: n.querySelector('[data-testid=message-content]').textContent,
                time: n.querySelector('[data-testid=message-time]')?.textContent ?? null,
            }))""",
        )

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path))
        return path


async def open_page(browser: Browser, server: TestServer) -> ChatPage:
    context = await browser.new_context(viewport=VIEWPORT, locale="en-GB", timezone_id="Europe/Madrid")
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    chat = ChatPage(context, page, dialogs=[], errors=[])

    async def on_dialog(dialog) -> None:
        chat.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: chat.errors.append(str(exc)))
    await page.goto(str(server.make_url("/")))
    await expect(page.locator("body[data-ready=true]")).to_be_attached()
    return chat


async def sign_in_demo(browser: Browser, server: TestServer, user_id: str) -> ChatPage:
    """A new browser context signed in as a demo user through the picker."""
    chat = await open_page(browser, server)
    await chat.hook("demo-user").select_option(user_id)
    await chat.hook("demo-sign-in").click()
    await expect(chat.hook("connection-state")).to_have_text("connected")
    return chat


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Note a failed test body on its item: the ``browser`` fixture then skips its axe check,
    which would only repeat the failure's screen."""
    outcome = yield
    if call.when == "call" and outcome.get_result().failed:
        item.failed_call = True  # type: ignore[attr-defined]
