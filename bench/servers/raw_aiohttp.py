"""Peer (3): a raw aiohttp WebSocket broadcaster, the Python ceiling on this machine.

It speaks just enough Engine.IO v4 / Socket.IO v5 over a websocket for the swarm (open packet,
namespace connect with a JWT, events with acks) and does the least a chat must: one room set per
group, the message serialised once (orjson) and written to each member, on uvloop. No pings, no
polling, no sessions: whatever this server costs is what Python + aiohttp cost per message.
"""

from __future__ import annotations

import jwt
import orjson
import uvloop
from aiohttp import WSMsgType, web

from bench.servers.common import arg_parser, groups_of, load_spec, message, new_id

OPEN = b'0{"sid":"%s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


def build(spec: dict) -> web.Application:
    secret = spec["secret"]
    groups = groups_of(spec)
    history: dict[str, list[dict]] = {g: [] for g in groups}
    rooms: dict[str, set[web.WebSocketResponse]] = {g: set() for g in groups}

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        await ws.send_str((OPEN % new_id().encode()).decode())
        user = None
        joined: set[str] = set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                data = msg.data
                if data.startswith("42") and user is not None:
                    br = data.index("[")
                    ack = data[2:br]
                    event, payload = orjson.loads(data[br:])
                    reply = await on_event(ws, user, joined, event, payload)
                    if ack:
                        await ws.send_str(f"43{ack}" + orjson.dumps([reply]).decode())
                elif data.startswith("40"):
                    try:
                        auth = orjson.loads(data[2:]) if len(data) > 2 else {}
                        user = jwt.decode(auth.get("token", ""), secret, algorithms=["HS256"])["sub"]
                        await ws.send_str('40{"sid":"%s"}' % new_id())
                    except (jwt.PyJWTError, orjson.JSONDecodeError, AttributeError):
                        await ws.send_str('44{"message":"unauthorized","data":{"code":"unauthorized"}}')
                elif data == "2":
                    await ws.send_str("3")
        finally:
            for g in joined:
                rooms[g].discard(ws)
        return ws

    async def on_event(ws, user, joined, event, payload):
        group_id = payload.get("group_id")
        group = groups.get(group_id)
        if group is None or user not in group[1]:
            return {"ok": False, "error": {"code": "not_member", "message": "not a member"}}
        msgs = history[group_id]
        if event == "join_group":
            rooms[group_id].add(ws)
            joined.add(group_id)
            return {"ok": True, "group": {"id": group_id, "name": group[0]},
                    "messages": msgs[-50:], "has_more": len(msgs) > 50, "latest_seq": len(msgs)}
        if event == "send_message":
            msg = message(group_id, len(msgs) + 1, user, payload["content"])
            msgs.append(msg)
            frame = '42["message",' + orjson.dumps(msg).decode() + "]"
            for member in list(rooms[group_id]):
                await member.send_str(frame)
            return {"ok": True, "message": msg, "duplicate": False}
        return {"ok": False, "error": {"code": "invalid_payload", "message": "unknown event"}}

    app = web.Application()
    app.router.add_get("/socket.io/", handle)
    return app


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    web.run_app(build(load_spec(args.spec)), host="127.0.0.1", port=args.port,
                access_log=None, print=None, shutdown_timeout=2, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
