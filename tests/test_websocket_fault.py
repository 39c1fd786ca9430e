"""A fault of the server's own while it handles one client's WebSocket message ends that
connection with close code 1011 and a logged error; everyone else goes on.

The server runs in this process so that the fault can be made: the hand-over of plain
events to their handlers is replaced by one that fails on a marked message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from server.keys import SIO
from tests.support.chat import ANA, BEN, MATHS, make_token
from tests.support.wsclient import Client
from tests.test_websocket_layer import closed_with


async def test_a_fault_while_handling_a_message_closes_only_that_connection_with_1011(
    server: Any, connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    eio = server.app[SIO].eio
    hand_over = eio.start_plain_event

    def failing(sid: str, frame: str) -> bool:
        if "fault here" in frame:
            raise RuntimeError("a fault of the server's own")
        return bool(hand_over(sid, frame))

    monkeypatch.setattr(eio, "start_plain_event", failing)
    bystander = await connect(BEN)
    assert (await bystander.call("join_group", {"group_id": MATHS}))["ok"] is True
    client = await Client.signed_in(server.port, make_token(ANA))
    with caplog.at_level(logging.ERROR):
        client.send("422" + json.dumps(["send_message", {"group_id": MATHS, "content": "fault here"}]))
        assert await closed_with(client) == 1011
    assert any("could not be handled" in r.getMessage() and r.exc_info for r in caplog.records), caplog.text
    answer = await bystander.call("send_message", {"group_id": MATHS, "content": "still here"})
    assert answer["ok"] is True, answer
