"""HTTP routes: history and groups for REST clients, health, demo sign-in, the page, the API documentation."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from handlers import schemas
from handlers.auth import bearer
from handlers.errors import ChatError, invalid
from storage.base import ID_RE, StorageUnavailable, User
from storage.memory import MemoryStore

from .keys import CHAT, CLUSTER, EVENTS, SETTINGS, STORE, VERIFIER

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


STATIC_DIR = web.AppKey("static_dir", Path)
# The JavaScript client package (clients/js), which the page imports as an ES module.
CLIENT_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "clients" / "js" / "src"
API_DOCS_DIR = web.AppKey("api_docs_dir", Path)
# The AsyncAPI page (docs/asyncapi.yaml as HTML), built by `make api-docs` (docs/api/build.mjs).
API_DOCS_BUILD = Path(__file__).resolve().parent.parent / "docs" / "api" / "build"


def setup_routes(app: web.Application, static_dir: Path) -> None:
    app[STATIC_DIR] = static_dir
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/study-groups", list_groups)
    app.router.add_get("/study-groups/{group_id:[^/]+}/messages", group_messages)
    app.router.add_get("/search", search)
    app.router.add_get("/demo/users", demo_users)
    app.router.add_post("/demo/token", demo_token)
    app.router.add_get("/", index)
    app[API_DOCS_DIR] = API_DOCS_BUILD
    app.router.add_get("/docs", api_docs)
    app.router.add_get("/docs/{name:[^/]*}", api_docs)
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource) and not resource.canonical.startswith("/socket.io"):
            resource.add_route("OPTIONS", preflight)
    app.router.add_static("/static/client/", CLIENT_PACKAGE_DIR, show_index=False)
    app.router.add_static("/static/", static_dir, show_index=False)
    app.on_response_prepare.append(cors_headers)


def error_response(exc: ChatError) -> web.Response:
    headers = {}
    if exc.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
    return web.json_response(exc.envelope(), status=exc.http_status, headers=headers)


async def _authenticated(request: web.Request, cost: Callable[[str], int] | None = None) -> str:
    """The caller's user id, once their token is verified and the rate limit has room for
    ``cost(user_id)`` tokens (one when not given)."""
    user_id = request.app[VERIFIER].verify(bearer(request.headers.get("Authorization")))
    retry_after = await request.app[EVENTS].limiter.check(user_id, "http", cost(user_id) if cost else 1)
    if retry_after is not None:
        raise ChatError("rate_limited", retry_after_ms=retry_after)
    return user_id


def api_route(handler):
    """The HTTP error boundary: the same envelope as acks, with matching status codes."""

    async def run(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response, outcome = await handler(request), "ok"
        except ChatError as exc:
            # Repeatable at will: a line per code per interval (the user is not known before the token).
            request.app[EVENTS].refusals.refused(None, exc.code, f"{request.method} {request.path}")
            response, outcome = error_response(exc), exc.code
        except StorageUnavailable as exc:
            log.error("storage unavailable during %s %s: %s", request.method, request.path, exc)
            response, outcome = error_response(ChatError("storage_unavailable")), "storage_unavailable"
        except web.HTTPException:  # aiohttp's own answers (a route that is off, say)
            raise
        except Exception:  # the catch-all: the envelope and the metrics, not aiohttp's plain-text 500
            log.exception("internal error in %s %s", request.method, request.path)
            response, outcome = error_response(ChatError("internal")), "internal"
        request.app[EVENTS].observer.event(f"http:{handler.__name__}", outcome, time.perf_counter() - started)
        return response

    return run


@api_route
async def list_groups(request: web.Request) -> web.Response:

    chat = request.app[CHAT]
    user_id = await _authenticated(request, chat.groups_cost)
    return web.json_response(await chat.list_groups(user_id))


@api_route
async def group_messages(request: web.Request) -> web.Response:

    user_id = await _authenticated(request)
    try:
        data = schemas.history_query(request.match_info["group_id"], request.query)
    except ValidationError as exc:
        raise invalid(exc.normalized_messages()) from None
    return web.json_response(await request.app[CHAT].history(user_id, data))


@api_route
async def search(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    # A search of all the caller's groups reads each of them (see ChatService.groups_cost).
    user_id = await _authenticated(request, None if request.query.get("group_id") else chat.groups_cost)
    try:
        data = schemas.search_query(request.query)
    except ValidationError as exc:
        raise invalid(exc.normalized_messages()) from None
    return web.json_response(await chat.search(user_id, data))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:

    checks = {"storage": await _probe(request.app[STORE].ping())}
    if CLUSTER in request.app:
        checks["redis"] = await _probe(request.app[CLUSTER].ping())
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ready, "checks": checks}, status=200 if ready else 503)


async def _probe(ping) -> str:
    """``ok``, or why the dependency did not answer within ``READY_TIMEOUT_S``."""
    try:
        await asyncio.wait_for(ping, READY_TIMEOUT_S)
        return "ok"
    except (TimeoutError, StorageUnavailable, OSError) as exc:
        return f"unavailable: {exc or type(exc).__name__}"


def _demo_users(request: web.Request) -> list[User]:
    """The demo's users: 404 unless the server runs with ``--demo`` (on the embedded store)."""
    store = request.app[STORE]
    if not request.app[SETTINGS].demo or not isinstance(store, MemoryStore):
        raise web.HTTPNotFound()
    return store.users()


@api_route
async def demo_users(request: web.Request) -> web.Response:
    users = _demo_users(request)
    return web.json_response({"ok": True, "users": [{"id": u.id, "name": u.name} for u in users]})


@api_route
async def demo_token(request: web.Request) -> web.Response:
    known = {u.id for u in _demo_users(request)}
    try:
        body: Any = await request.json()
    except ValueError:
        body = None
    user_id = body.get("user_id") if isinstance(body, dict) else None
    if not isinstance(user_id, str) or not ID_RE.fullmatch(user_id) or user_id.lower() not in known:
        raise invalid({"user_id": ["Not a demo user id."]})
    return web.json_response({"ok": True, "token": request.app[VERIFIER].issue(user_id)})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[STATIC_DIR] / "index.html")


async def api_docs(request: web.Request) -> web.StreamResponse:
    """``/docs``: the AsyncAPI page and the files beside it, as ``make api-docs`` built them
    (a ``.gz`` twin goes to browsers that accept gzip)."""
    directory = request.app[API_DOCS_DIR]
    name = request.match_info.get("name") or "index.html"
    if not (directory / "index.html").is_file():
        return web.Response(status=404, text="The API documentation is not built: run `make api-docs`.\n")
    path = directory / name
    if name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


# CORS for the HTTP routes: the configured origins (the page's own needs none);
# Engine.IO answers CORS for /socket.io/ itself. Headers are added as each
# response is prepared rather than by a middleware, whose frame every WebSocket
# connection would hold for its whole life.


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[SETTINGS].cors_origins else None


async def preflight(request: web.Request) -> web.Response:
    if _allowed_origin(request) is None:
        raise web.HTTPMethodNotAllowed("OPTIONS", ["GET", "HEAD", "POST"])
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600",
    })


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/socket.io"):
        return
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
