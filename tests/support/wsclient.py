"""A WebSocket client written by hand over TCP, for the exact bytes of the WebSocket layer.

It speaks just enough Engine.IO and Socket.IO to sign in and join a group, and costs a few
hundred bytes per connection, so that thousands can be opened from one test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

from tests.support.chat import MATHS

__all__ = ["MATHS", "Client", "frame"]


class Client:
    """A hand-written WebSocket client speaking just enough Engine.IO and Socket.IO."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, early: bytes = b"") -> Client:
        """Past the upgrade; ``early`` is written in the same write as the request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode() + early)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    @classmethod
    async def signed_in(cls, port: int, token: str) -> Client:
        """Signed in and in Maths, the way a browser's client gets there."""
        client = await cls.open(port)
        assert (await client.text()).startswith("0{")
        client.send("40" + json.dumps({"token": token}))
        assert (await client.text()).startswith("40{")
        client.send("421" + json.dumps(["join_group", {"group_id": MATHS}]))
        assert (await client.ack(1))["ok"]
        return client

    async def ack(self, ack_id: int) -> dict[str, Any]:
        """The answer to the request numbered ``ack_id`` (other frames are skipped)."""
        prefix = f"43{ack_id}["
        while not (text := await self.text()).startswith(prefix):
            pass
        answer: dict[str, Any] = json.loads(text[len(prefix) - 1:])[0]
        return answer

    def send(self, text: str, opcode: int = 0x1) -> None:
        self.writer.write(frame(text.encode(), opcode))

    async def next_frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next frame's opcode and payload (server frames are not masked)."""
        async def read() -> tuple[int, bytes]:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return first & 0x0F, await self.reader.readexactly(size)
        return await asyncio.wait_for(read(), timeout)

    async def text(self, timeout: float = 10) -> str:
        """The next text frame that is not an Engine.IO ping (pings are answered)."""
        while True:
            opcode, payload = await self.next_frame(timeout)
            assert opcode == 0x1, (opcode, payload)
            if payload == b"2":
                self.send("3")
                continue
            return payload.decode()

    def close(self) -> None:
        self.writer.close()


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client frame."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", size)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked
