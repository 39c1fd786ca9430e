"""The application factory: one aiohttp app serving HTTP and Socket.IO on one port."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from aiohttp import web

from handlers.auth import TokenConfig, TokenVerifier
from handlers.chat import ChatService
from handlers.events import ChatEvents
from cluster.presence import LocalPresence
from cluster.rate_limits import LocalLimiter
from realtime.codec import StrictPacket
from realtime.manager import FastManager
from realtime.socket_server import FastSocketServer
from storage import Store, make_store

from . import http
from .config import Settings
from .demo import seed_demo
from .logs import library_logger
from .metrics import Metrics
from .metrics import add_route as add_metrics_route
from .scale_out import Cluster
from .keys import CHAT, CLUSTER, EVENTS, SETTINGS, SIO, STORE, VERIFIER

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Engine.IO's packet limit: every valid payload fits (4,000 code points of
# content is at most 16 KB of UTF-8, plus envelope); larger frames close the
# connection instead of being buffered.
MAX_PACKET_BYTES = 64 * 1024



def origin_checker(settings: Settings):
    """Allow the configured origins and the page's own origin, never ``*`` by default."""
    allowed = set(settings.cors_origins)

    def check(origin: str | None, environ: Mapping[str, Any] | None = None) -> bool:
        if origin is None or origin in allowed:
            return True
        return environ is not None and origin in _own_origins(environ)

    return check


def _own_origins(environ: Mapping[str, Any]) -> set[str]:
    scheme, host = environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST")
    origins = {f"{scheme}://{host}"} if host else set()
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host)
    forwarded_proto = environ.get("HTTP_X_FORWARDED_PROTO", scheme)
    if forwarded_host:
        origins.add(f"{forwarded_proto.split(',')[0].strip()}://{forwarded_host.split(',')[0].strip()}")
    return origins


def create_app(settings: Settings, *, storage: Store | None = None) -> web.Application:
    """Build the app; nothing connects until the app starts (``cleanup_ctx``)."""
    if storage is None:
        storage = make_store(settings.mongodb_uri, settings.mongodb_db)
        if settings.demo:
            seed_demo(storage)

    cluster = None
    if settings.redis_url:
        cluster = Cluster(settings.redis_url, settings.rate_limits, settings.presence_ttl_s)
    sio = FastSocketServer(
        async_mode="aiohttp",
        # Socket.IO packets decode with SafeJSON (StrictPacket.json); Engine.IO's
        # own packets keep Engine.IO's parser, whose errors its upgrade probe needs.
        serializer=StrictPacket,
        client_manager=cluster.manager if cluster else FastManager(),
        cors_allowed_origins=origin_checker(settings),
        max_http_buffer_size=MAX_PACKET_BYTES,
        logger=library_logger("socketio.server"),
        engineio_logger=library_logger("engineio.server"),
    )
    sio.eio.set_frame_budget(settings.frame_budget_per_s)

    verifier = TokenVerifier(
        TokenConfig(
            key=settings.jwt_key,
            algorithms=settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
    chat = ChatService(storage)
    metrics = Metrics()
    events = ChatEvents(
        sio,
        chat,
        verifier,
        presence=cluster.presence if cluster else LocalPresence(),
        limiter=cluster.limiter if cluster else LocalLimiter(settings.rate_limits),
        observer=metrics,
    )
    events.register()

    app = web.Application(client_max_size=MAX_PACKET_BYTES)
    app[SETTINGS] = settings
    app[STORE] = storage
    app[SIO] = sio
    app[EVENTS] = events
    app[CHAT] = chat
    app[VERIFIER] = verifier
    if cluster:
        app[CLUSTER] = cluster
    sio.attach(app)
    http.setup_routes(app, STATIC_DIR)
    add_metrics_route(app, metrics)
    app.cleanup_ctx.append(_storage_lifecycle)
    app.on_shutdown.append(_close_transports)
    return app


async def _storage_lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    try:
        if CLUSTER in app:
            async for _ in app[CLUSTER].lifecycle(app[EVENTS]):
                yield
        else:
            yield
    finally:
        await store.close()


async def _close_transports(app: web.Application) -> None:
    """Graceful shutdown, after aiohttp stopped accepting connections: finish
    the events in flight (stored and acked, or refused), then end every
    Engine.IO session at the transport level so standard clients reconnect by
    themselves (a Socket.IO disconnect would tell them not to)."""
    sio = app[SIO]
    await app[EVENTS].quiesce(app[SETTINGS].shutdown_grace_s)
    # wait=False: a polling client between two requests may never poll again
    # (the listener is already closed); its CLOSE packet waits in the queue
    # and aiohttp's shutdown timeout ends what is still open.
    sockets = list(sio.eio.sockets.values())
    await asyncio.gather(
        *(s.close(wait=False, reason=sio.eio.reason.SERVER_DISCONNECT) for s in sockets),
        return_exceptions=True,
    )
    await sio.shutdown()
