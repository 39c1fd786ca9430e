"""A client that behaves like the bundled page: every send carries a client_msg_id
and is resent with the same id after an error, a timeout or a reconnect, until it
is acknowledged; history is caught up by seq after every reconnect."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import aiohttp
import socketio

from .chat import make_token

RETRYABLE = {"storage_unavailable", "rate_limited"}


class ResilientClient:
    def __init__(self, user_id: str, urls: Sequence[str], group_id: str) -> None:
        self.user_id = user_id
        self.urls = list(urls)
        self.group_id = group_id
        self.sio: socketio.AsyncClient | None = None
        self.acked: dict[str, dict] = {}  # client_msg_id -> acked message
        self.seen: dict[int, dict] = {}  # seq -> message, from broadcasts and catch-up
        self.live_seqs: list[int] = []  # broadcast seqs in arrival order, per connection
        self._ids = itertools.count()
        self._url_index = 0
        # One HTTP session of our own: a client whose server died does not
        # close the one it would otherwise make.
        self._http: aiohttp.ClientSession | None = None

    async def connect(self) -> None:
        for _ in range(len(self.urls) * 20):
            url = self.urls[self._url_index % len(self.urls)]
            if self._http is None:
                self._http = aiohttp.ClientSession()
            sio = socketio.AsyncClient(reconnection=False, http_session=self._http)
            sio.on("message", self._on_message)
            try:
                await sio.connect(url, auth={"token": make_token(self.user_id)}, transports=["websocket"],
                                  wait_timeout=5)
                ack = await sio.call("join_group", {"group_id": self.group_id,
                                                    "since_seq": max(self.seen, default=0)}, timeout=10)
                if not ack["ok"]:
                    raise ConnectionError(ack)
                self._absorb(ack["messages"])
                while ack["has_more"]:
                    ack = await sio.call("get_history", {"group_id": self.group_id,
                                                         "after_seq": max(self.seen)}, timeout=10)
                    self._absorb(ack["messages"])
                self.sio = sio
                self.live_seqs = []
                return
            except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError, ConnectionError,
                    socketio.exceptions.BadNamespaceError):
                if sio.connected:
                    await sio.disconnect()
                self._url_index += 1  # the load balancer picks another node
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.user_id} could not reconnect")

    async def _on_message(self, message: dict) -> None:
        self.live_seqs.append(message["seq"])
        self.seen.setdefault(message["seq"], message)

    def _absorb(self, messages: list[dict]) -> None:
        for m in messages:
            self.seen.setdefault(m["seq"], m)

    async def send(self, content: str, client_msg_id: str | None = None) -> dict:
        """Send until acknowledged; returns the acked message."""
        client_msg_id = client_msg_id or f"{self.user_id}-{next(self._ids)}"
        while True:
            if self.sio is None or not self.sio.connected:
                await self.reconnect()
            try:
                ack = await self.sio.call("send_message", {"group_id": self.group_id, "content": content,
                                                           "client_msg_id": client_msg_id}, timeout=10)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError,
                    socketio.exceptions.DisconnectedError):
                await self.reconnect()
                continue
            if ack["ok"]:
                self.acked[client_msg_id] = ack["message"]
                return ack["message"]
            assert ack["error"]["code"] in RETRYABLE, ack
            await asyncio.sleep(ack["error"].get("retry_after_ms", 200) / 1000)

    async def reconnect(self) -> None:
        if self.sio is not None and self.sio.connected:
            await self.sio.disconnect()
        self.sio = None
        await self.connect()

    async def catch_up(self) -> list[int]:
        """Fill every gap from history; the seqs held afterwards."""
        if self.sio is None or not self.sio.connected:
            await self.reconnect()
        after = 0
        while True:
            page = await self.sio.call("get_history", {"group_id": self.group_id, "after_seq": after,
                                                       "limit": 100}, timeout=10)
            self._absorb(page["messages"])
            if not page["has_more"]:
                return sorted(self.seen)
            after = page["messages"][-1]["seq"]

    async def close(self) -> None:
        if self.sio is not None and self.sio.connected:
            await self.sio.disconnect()
        if self._http is not None:
            await self._http.close()
