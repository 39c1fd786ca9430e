"""A real webhook receiver (an aiohttp server on a port of its own) whose answers
a test scripts, and helpers to read what it received.

A message whose content starts with ``plan:`` tells the receiver how to answer
each attempt of its event, by the attempt's number: ``plan:500,429s4,200``
answers the first attempt 500, the second 429 with ``Retry-After: 4``, and
every later one 200. Steps: a status code; ``429sN`` (``Retry-After`` in
seconds); ``429dN`` (``Retry-After`` as an HTTP date N seconds ahead);
``hold`` (keep the request open until the test ``release``-s it). Other
events are answered 200.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from .ports import free_port

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-32-bytes-ok").decode()


@dataclass
class Delivery:
    at: float  # monotonic
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what the receiver answered (None while held)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def payload(self, secret: str = WEBHOOK_SECRET) -> Any:
        """The JSON body, after checking its signature with the ``standardwebhooks`` package."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.deliveries: list[Delivery] = []
        self.released = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/chat"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/chat", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        """Close the port (requests held open are let go first)."""
        self.released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def release(self) -> None:
        self.released.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        delivery = Delivery(time.monotonic(), dict(request.headers), body)
        attempt = sum(1 for d in self.deliveries if d.id == delivery.id)
        self.deliveries.append(delivery)
        self._changed.set()
        step = _plan(body)[attempt] if attempt < len(_plan(body)) else "200"
        headers = {}
        if step == "hold":
            await self.released.wait()
            step = "200"
        elif m := re.fullmatch(r"429([sd])(\d+)", step):
            seconds = int(m.group(2))
            headers["Retry-After"] = str(seconds) if m.group(1) == "s" else formatdate(time.time() + seconds,
                                                                                       usegmt=True)
            step = "429"
        delivery.status = int(step)
        self._changed.set()
        return web.Response(status=delivery.status, headers=headers, text="ok")

    def by_id(self) -> dict[str, list[Delivery]]:
        found: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            found.setdefault(d.id, []).append(d)
        return found

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received: {[(d.id, d.status) for d in self.deliveries]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                pass


def _plan(body: bytes) -> list[str]:
    try:
        content = json.loads(body)["data"]["message"]["content"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(content, str) or not content.startswith("plan:"):
        return []
    return content[len("plan:"):].split(" ", 1)[0].split(",")  # what follows a space is a label


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()
