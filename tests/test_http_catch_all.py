"""The HTTP routes' catch-all: an unexpected error still answers the one envelope and is counted."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from server.app import create_app
from storage.base import GroupSummary
from storage.memory import MemoryStore
from tests.support.chat import ANA, MATHS, make_settings, make_token, seeded_store


class _FaultyStore(MemoryStore):
    """The embedded store with one read that fails in a way nothing expects."""

    async def list_groups(self, user_id: str) -> list[GroupSummary]:
        raise RuntimeError("an unexpected fault")


@pytest.fixture
async def faulty_url(aiohttp_server) -> str:
    store = seeded_store()
    store.__class__ = _FaultyStore  # the same users and groups
    server = await aiohttp_server(create_app(make_settings(), storage=store))
    return str(server.make_url("")).rstrip("/")


async def test_an_unexpected_error_answers_the_envelope_and_is_counted(faulty_url, caplog):
    caplog.set_level(logging.ERROR, "server.http")
    headers = {"Authorization": f"Bearer {make_token(ANA)}"}
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{faulty_url}/study-groups", headers=headers)
        assert resp.status == 500 and resp.content_type == "application/json"
        assert await resp.json() == {"ok": False, "error": {"code": "internal", "message": "Internal server error."}}
        # The other routes are unaffected.
        resp = await http.get(f"{faulty_url}/study-groups/{MATHS}/messages", headers=headers)
        assert resp.status == 200 and (await resp.json())["ok"] is True
        metrics = await (await http.get(f"{faulty_url}/metrics")).text()
    assert 'chat_events_total{event="http:list_groups",outcome="internal"} 1.0' in metrics
    logged = [r for r in caplog.records if r.name == "server.http" and r.exc_info]
    assert len(logged) == 1 and "an unexpected fault" in str(logged[0].exc_info[1])
