"""Raw Engine.IO v4 over HTTP long-polling and WebSocket, to see the exact bytes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

PATH = "/socket.io/"


class Polling:
    """One long-polling Engine.IO session, driven request by request."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.sid = ""
        self.handshake: dict[str, Any] = {}

    def url(self, **query: str) -> str:
        params = {"EIO": "4", "transport": "polling", **query}
        return self.base_url + PATH + "?" + "&".join(f"{k}={v}" for k, v in params.items())

    async def open(self) -> Polling:
        async with self.http.get(self.url()) as response:
            assert response.status == 200, await response.text()
            body = await response.text()
        assert body.startswith("0"), body
        self.handshake = json.loads(body[1:])
        self.sid = self.handshake["sid"]
        return self

    async def get(self, timeout: float = 10) -> tuple[int, str]:
        """One poll: its status and body."""
        async with self.http.get(self.url(sid=self.sid), timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, await response.text()

    async def post(self, body: str | bytes, timeout: float = 10, **kwargs: Any) -> tuple[int, str]:
        async with self.http.post(self.url(sid=self.sid), data=body, timeout=aiohttp.ClientTimeout(total=timeout),
                                  **kwargs) as response:
            return response.status, await response.text()

    async def packets(self, count: int, timeout: float = 10) -> list[str]:
        """Poll until ``count`` packets have arrived (pings answered and left out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[str] = []
        while len(got) < count:
            status, body = await self.get(max(0.1, deadline - loop.time()))
            assert status == 200, (status, body)
            for packet in body.split("\x1e"):
                if packet == "2":
                    assert (await self.post("3"))[0] == 200
                else:
                    got.append(packet)
        return got


def ws_url(base_url: str, **query: str) -> str:
    params = {"EIO": "4", "transport": "websocket", **query}
    return base_url.replace("http", "ws", 1) + PATH + "?" + "&".join(f"{k}={v}" for k, v in params.items())


async def closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> bool:
    """Whether the server closes ``ws`` within ``seconds`` (frames before the close are read and dropped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            message = await ws.receive(timeout=remaining)
        except TimeoutError:
            return False
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
            return True
