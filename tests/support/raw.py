"""A Socket.IO client written by hand over one websocket, to send exact packet text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class RawSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.replies: list[str] = []

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, server_url: str, token: str) -> RawSocket:
        ws = await session.ws_connect(f"{server_url}/socket.io/?EIO=4&transport=websocket")
        raw = cls(ws)
        assert (await raw.receive()).startswith("0{")  # Engine.IO open
        await ws.send_str("40" + json.dumps({"token": token}))
        assert (await raw.receive()).startswith("40{")  # Socket.IO connect accepted
        return raw

    async def receive(self, timeout: float = 10) -> str:
        """The next frame that is not an Engine.IO ping (pings are answered)."""
        while True:
            text = await self.ws.receive_str(timeout=timeout)
            if text == "2":
                await self.ws.send_str("3")
                continue
            return text

    async def ack(self, ack_id: int, timeout: float = 10) -> Any:
        """Wait for the ack with this id (keeping other frames); its argument, or ``None``."""
        prefix = f"43{ack_id}["
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for reply in self.replies:
                if reply.startswith(prefix):
                    return json.loads(reply[len(prefix) - 1:])[0]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                self.replies.append(await self.receive(remaining))
            except TimeoutError:
                return None

    async def call(self, ack_id: int, packet_text: str) -> Any:
        """Send ``42<ack_id><packet_text>`` and return the ack's argument."""
        await self.ws.send_str(f"42{ack_id}{packet_text}")
        answer = await self.ack(ack_id)
        assert answer is not None, f"no ack {ack_id}; frames: {self.replies}"
        return answer
