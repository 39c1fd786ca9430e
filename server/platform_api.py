"""The platform's own HTTP calls, made with service tokens (``role: "service"``).

A user's token is refused here (403 ``forbidden``) before anything about the
group is read. Errors come in the order 401 → 403 → 400 → 404, in the same
envelope as every other route. Service calls are not rate-limited: the
platform signs its tokens itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from handlers import schemas
from handlers.auth import bearer
from handlers.errors import invalid
from storage.base import Message

from .http import api_route
from .keys import CHAT, MEMBERSHIP, SIO, VERIFIER


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/study-groups/{group_id:[^/]+}/messages", post_message)
    app.router.add_post("/study-groups/{group_id:[^/]+}/membership-changed", membership_changed)


def _service(request: web.Request) -> str:
    """The calling service's name, or the refusal (``unauthorized``, ``forbidden``)."""
    return request.app[VERIFIER].verify_service(bearer(request.headers.get("Authorization")))


def _group_id(request: web.Request) -> str:
    try:
        return schemas.group_ref(request.match_info["group_id"])
    except ValidationError as exc:
        raise invalid(exc.normalized_messages()) from None


@api_route
async def post_message(request: web.Request) -> web.Response:
    """A message of the platform's (kind ``system``) in the group, stored and broadcast
    like a member's send, idempotent by ``client_msg_id``."""
    service = _service(request)
    try:
        body: Any = await request.json()
    except ValueError:
        raise invalid({"_payload": ["The body must be JSON."]}) from None
    try:
        data = schemas.system_message(request.match_info["group_id"], body)
    except ValidationError as exc:
        raise invalid(exc.normalized_messages()) from None
    group_id = data["group_id"]
    sio = request.app[SIO]

    async def publish(message: Message) -> None:
        await sio.emit("message", message, room=group_id)

    message, duplicate = await request.app[CHAT].post_system(
        service, group_id, content=data["content"], client_msg_id=data.get("client_msg_id"),
        mentions=data["mentions"], publish=publish,
    )
    return web.json_response({"ok": True, "message": message, "duplicate": duplicate})


@api_route
async def membership_changed(request: web.Request) -> web.Response:
    """Re-read the group's members now, on every node (a deleted group: everyone leaves it)."""
    _service(request)
    group_id = _group_id(request)
    await request.app[MEMBERSHIP].changed(group_id)
    return web.json_response({"ok": True})
