"""What an operator relies on: rate limits, size limits, metrics, health and logs."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from prometheus_client import generate_latest

from cluster.rate_limits import Bucket, RateLimits
from server.metrics import Metrics
from tests.support.chat import ANA, BEN, CAROL, MATHS, make_settings, make_token


@pytest.fixture
def settings():
    # Small buckets so a test can exhaust them quickly.
    return make_settings(rate_limits=RateLimits(send=Bucket(2.0, 5), other=Bucket(5.0, 20)))


async def test_a_flooding_user_cannot_stop_anothers_messages(connect):
    flooder, ben, carol = await connect(ANA), await connect(BEN), await connect(CAROL)
    await carol.call("join_group", {"group_id": MATHS})

    async def flood():
        return await asyncio.gather(*[
            flooder.call("send_message", {"group_id": MATHS, "content": f"spam {i}"}) for i in range(60)])

    async def ben_talks():
        acks = []
        for i in range(4):
            acks.append(await ben.call("send_message", {"group_id": MATHS, "content": f"ben {i}"}))
        return acks

    flood_acks, ben_acks = await asyncio.gather(flood(), ben_talks())
    accepted = [a for a in flood_acks if a["ok"]]
    refused = [a for a in flood_acks if not a["ok"]]
    assert len(accepted) <= 6  # the burst (plus what refilled meanwhile)
    assert refused and all(a["error"]["code"] == "rate_limited" for a in refused)
    assert all(a["error"]["retry_after_ms"] > 0 for a in refused)
    assert all(a["ok"] for a in ben_acks)
    # Everything acknowledged reached the room, and nothing refused did.
    expected = len(accepted) + len(ben_acks)
    received = await carol.wait_event("message", expected)
    await carol.settle()
    assert [m["seq"] for m in carol.events("message")] == list(range(1, expected + 1))
    assert sum(m["content"].startswith("ben") for m in received) == 4


async def test_rate_limit_comes_before_validation(connect):
    ana = await connect(ANA)
    codes = [(await ana.call("get_history", {"bogus": True}))["error"]["code"] for _ in range(25)]
    assert codes[:20] == ["invalid_payload"] * 20
    assert "rate_limited" in codes[20:]


async def test_http_rate_limit_is_429_with_retry_after(server_url):
    headers = {"Authorization": f"Bearer {make_token(BEN)}"}
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(25):
            async with http.get(f"{server_url}/study-groups", headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    body = await resp.json()
                    assert body["error"]["code"] == "rate_limited"
                    assert int(resp.headers["Retry-After"]) >= 1
        assert statuses[0] == 200 and 429 in statuses


async def test_oversized_frame_closes_only_that_connection(connect):
    ana, ben = await connect(ANA), await connect(BEN)
    await ben.call("join_group", {"group_id": MATHS})
    disconnected = asyncio.Event()
    ana.sio.on("disconnect", lambda *a: disconnected.set())
    await ana.sio.emit("send_message", {"group_id": MATHS, "content": "x" * 70_000})
    await asyncio.wait_for(disconnected.wait(), 10)
    ack = await ben.call("send_message", {"group_id": MATHS, "content": "still fine"})
    assert ack["ok"] and ack["message"]["seq"] == 1


async def test_over_long_content_is_invalid_payload(connect):
    ana = await connect(ANA)
    ack = await ana.call("send_message", {"group_id": MATHS, "content": "é" * 4001})
    assert ack["error"]["code"] == "invalid_payload" and "content" in ack["error"]["details"]


async def test_metrics_count_events_outcomes_and_connections(connect, server_url):
    ana = await connect(ANA)
    await ana.call("join_group", {"group_id": MATHS})
    await ana.call("send_message", {"group_id": MATHS, "content": "hi"})
    await ana.call("send_message", {"group_id": MATHS, "content": ""})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    assert "chat_connected_clients 1.0" in text
    assert "chat_joined_rooms 1.0" in text
    assert 'chat_events_total{event="send_message",outcome="ok"} 1.0' in text
    assert 'chat_events_total{event="send_message",outcome="invalid_payload"} 1.0' in text
    assert "chat_send_stored_seconds_count 1.0" in text
    assert "chat_send_broadcast_seconds_count 1.0" in text
    # A histogram as Prometheus reads it: cumulative buckets, the +Inf one equal to the count.
    buckets = [line for line in text.splitlines()
               if line.startswith('chat_event_duration_seconds_bucket{event="send_message"')]
    counts = [float(line.rsplit(" ", 1)[1]) for line in buckets]
    assert len(buckets) == 14 and buckets[-1].startswith('chat_event_duration_seconds_bucket{event="send_message",le="+Inf"}')
    assert counts == sorted(counts) and counts[-1] == 2.0
    assert 'chat_event_duration_seconds_count{event="send_message"} 2.0' in text
    assert 'chat_event_duration_seconds_created{event="send_message"}' in text


def test_a_latency_on_a_bucket_bound_is_counted_in_that_bucket():
    metrics = Metrics()
    for seconds in (0.005, 0.0050001, 99.0):
        metrics.event("send_message", "ok", seconds)
    text = generate_latest(metrics.registry).decode()
    bucket = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("chat_event_duration_seconds_bucket")}
    assert (bucket["0.0025"], bucket["0.005"], bucket["0.01"], bucket["5.0"], bucket["+Inf"]) == (0, 1, 2, 2, 3)
    assert 'chat_event_duration_seconds_sum{event="send_message"} 99.01' in text


async def test_health_and_readiness(server_url):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{server_url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["checks"] == {"storage": "ok"}


async def test_refusals_are_logged_with_context_but_never_content_or_tokens(connect, caplog):
    caplog.set_level(logging.INFO)
    token = make_token(ANA)
    ana = await connect(ANA, token=token)
    await ana.call("send_message", {"group_id": MATHS, "content": "my secret essay"})
    await ana.call("send_message", {"group_id": "65b0000000000000000000ff", "content": "another secret"})
    refusal = [r for r in caplog.records if "refused send_message" in r.getMessage()]
    assert len(refusal) == 1 and refusal[0].levelno == logging.WARNING
    line = refusal[0].getMessage()
    assert f"user={ANA}" in line and "group=65b0000000000000000000ff" in line
    assert "code=group_not_found" in line and "sid=" in line
    everything = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "secret" not in everything
    assert token not in everything

