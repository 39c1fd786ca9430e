"""Peer (2): the same chat on python-socketio with default settings.

``socketio.AsyncServer()`` as its docs show it (stdlib json, the default asyncio loop), PyJWT in
the connect handler, an in-memory store. ``--redis-url`` swaps in ``AsyncRedisManager``.
"""

from __future__ import annotations

import jwt
import socketio
from aiohttp import web

from bench.servers.common import arg_parser, groups_of, load_spec, message


def build(spec: dict, redis_url: str | None) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(client_manager=manager) if manager else socketio.AsyncServer()
    app = web.Application()
    sio.attach(app)
    secret = spec["secret"]
    groups = groups_of(spec)
    history: dict[str, list[dict]] = {g: [] for g in groups}

    @sio.event
    async def connect(sid, environ, auth):
        try:
            claims = jwt.decode((auth or {}).get("token", ""), secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                "unauthorized", {"code": "unauthorized", "message": str(exc)}
            ) from None
        await sio.save_session(sid, {"user": claims["sub"]})

    @sio.event
    async def join_group(sid, data):
        user = (await sio.get_session(sid))["user"]
        group = groups.get(data.get("group_id"))
        if group is None or user not in group[1]:
            return {"ok": False, "error": {"code": "not_member", "message": "not a member"}}
        await sio.enter_room(sid, data["group_id"])
        msgs = history[data["group_id"]]
        return {"ok": True, "group": {"id": data["group_id"], "name": group[0]},
                "messages": msgs[-50:], "has_more": len(msgs) > 50, "latest_seq": len(msgs)}

    @sio.event
    async def send_message(sid, data):
        user = (await sio.get_session(sid))["user"]
        group_id = data.get("group_id")
        group = groups.get(group_id)
        if group is None or user not in group[1]:
            return {"ok": False, "error": {"code": "not_member", "message": "not a member"}}
        msgs = history[group_id]
        msg = message(group_id, len(msgs) + 1, user, data["content"])
        msgs.append(msg)
        await sio.emit("message", msg, room=group_id)
        return {"ok": True, "message": msg, "duplicate": False}

    return app


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    web.run_app(build(load_spec(args.spec), args.redis_url), host="127.0.0.1", port=args.port,
                access_log=None, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
