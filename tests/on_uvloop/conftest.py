"""The tests here run on uvloop's event loop, as ``python -m server`` does: what they
measure (the objects of a connection's transport) differs between event loops."""

from __future__ import annotations

from typing import Any

import uvloop


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    return {"uvloop": uvloop.new_event_loop}
