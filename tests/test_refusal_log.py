"""Refusals a client can repeat at will are logged once per interval with a count;
the metrics keep the exact numbers."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from cluster.rate_limits import Bucket, RateLimits
from handlers.refusal_log import RefusalLog
from tests.support.chat import ANA, BEN, MATHS, make_settings


@pytest.fixture
def settings():
    return make_settings(rate_limits=RateLimits(send=Bucket(1.0, 5), other=Bucket(50.0, 300)))


def refusal_lines(caplog: pytest.LogCaptureFixture, user: str, code: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "handlers.events" and r.getMessage().startswith("refused")
            and f"user={user} " in r.getMessage() and f"code={code}" in r.getMessage()]


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "handlers.events" and r.levelno >= logging.WARNING]


async def test_a_flood_of_refused_sends_writes_one_line_and_exact_metrics(connect, server_url, caplog):
    caplog.set_level(logging.INFO, "handlers.events")
    flooder, ben = await connect(ANA), await connect(BEN)
    acks = await asyncio.gather(*[
        flooder.call("send_message", {"group_id": MATHS, "content": f"spam {i}"}) for i in range(400)])
    refused = sum(1 for a in acks if not a["ok"] and a["error"]["code"] == "rate_limited")
    assert refused >= 390
    # Another user's refusals are logged on their own.
    ack = await ben.call("send_message", {"group_id": "not-an-id", "content": "x"})
    assert ack["error"]["code"] == "invalid_payload"

    assert len(refusal_lines(caplog, ANA, "rate_limited")) == 1
    assert len(refusal_lines(caplog, BEN, "invalid_payload")) == 1
    assert len(warnings(caplog)) == 2
    async with aiohttp.ClientSession() as http:
        metrics = await (await http.get(f"{server_url}/metrics")).text()
    counted = re.search(r'^chat_events_total\{event="send_message",outcome="rate_limited"\} (\S+)$', metrics, re.MULTILINE)
    assert counted and float(counted.group(1)) == refused
    assert f"chat_rate_limited_total {float(refused)}" in metrics


async def test_a_flood_of_unknown_events_writes_one_line(connect, caplog):
    caplog.set_level(logging.INFO, "handlers.events")
    flooder = await connect(ANA)
    acks = await asyncio.gather(*[flooder.call(f"no_such_event_{i}", {}) for i in range(200)])
    assert all(a["error"]["code"] == "invalid_payload" for a in acks)
    assert len(refusal_lines(caplog, ANA, "invalid_payload")) == 1
    assert len(warnings(caplog)) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_interval_gets_one_line_with_the_count_of_the_refusals_it_held(caplog):
    caplog.set_level(logging.INFO, "refusals")
    clock = _Clock()
    refusals = RefusalLog(logging.getLogger("refusals"), interval_s=10.0, clock=clock)
    for _ in range(1000):
        refusals.refused("u1", "rate_limited", "send_message", sid="s1")
        clock.now += 0.001  # 1,000 refusals in 1 s
    refusals.refused("u1", "not_member", "send_message", sid="s1")  # another code: its own line
    clock.now += 10.0
    refusals.refused("u1", "rate_limited", "send_message", sid="s1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused send_message sid=s1 user=u1 code=rate_limited",
        "refused send_message sid=s1 user=u1 code=not_member",
        "refused send_message sid=s1 user=u1 code=rate_limited (and 999 more since the last line)",
    ]
    # A pair that went quiet has its count written once its interval is over, then is forgotten.
    refusals.refused("u2", "rate_limited", "typing", sid="s2")
    refusals.refused("u2", "rate_limited", "typing", sid="s2")
    clock.now += 10.0
    refusals.flush()
    assert caplog.records[-1].getMessage() == \
        "refused 1 more times in 10 s, the latest: typing sid=s2 user=u2 code=rate_limited"
    refusals.flush()
    assert len(caplog.records) == 5


async def test_a_flood_of_refused_http_requests_writes_one_line_per_code(server_url, caplog):
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(f"{server_url}/study-groups", headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "code=unauthorized" in lines[0], lines
