"""The application factory: one aiohttp app serving HTTP and Socket.IO on one port."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from cluster.presence import LocalPresence
from cluster.rate_limits import LocalLimiter
from handlers.auth import TokenConfig, TokenVerifier
from handlers.chat import ChatService
from handlers.errors import invalid
from handlers.events import ChatEvents
from handlers.notifications import Notifier
from realtime.codec import StrictPacket
from realtime.manager import FastManager
from realtime.socket_server import FastSocketServer
from storage import Store, make_outbox, make_store, mongo_search
from storage.attachments import MemoryAttachments
from storage.mongo import MongoStore
from storage.mongo_attachments import GridFSAttachments
from storage.mongo_revisions import backfill_in_background

from . import attachments, http, platform_api
from .config import Settings
from .demo import seed_demo
from .keys import ATTACHMENTS, CHAT, CLUSTER, EVENTS, MEMBERSHIP, SETTINGS, SIO, STORE, VERIFIER, WEBHOOKS
from .logs import library_logger
from .membership import MembershipWatch
from .metrics import Metrics
from .metrics import add_route as add_metrics_route
from .scale_out import Cluster
from .webhooks import WebhookSender

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Engine.IO's packet limit: every valid payload fits (4,000 code points of
# content is at most 16 KB of UTF-8, plus envelope); larger frames close the
# connection instead of being buffered.
MAX_PACKET_BYTES = 64 * 1024



def origin_checker(settings: Settings) -> Callable[..., bool]:
    """Allow the configured origins and the page's own origin, never ``*`` by default."""
    allowed = set(settings.cors_origins)
    trust_proxy = settings.trust_proxy

    def check(origin: str | None, environ: Mapping[str, Any] | None = None) -> bool:
        if origin is None or origin in allowed:
            return True
        return environ is not None and origin in _own_origins(environ, trust_proxy=trust_proxy)

    return check


def _own_origins(environ: Mapping[str, Any], *, trust_proxy: bool) -> set[str]:
    """The origins the page itself was served from. ``X-Forwarded-Host``/``-Proto``
    count only behind a trusted proxy: anyone can send them."""
    request = environ.get("aiohttp.request")
    # Engine.IO's environ takes wsgi.url_scheme from X-Forwarded-Proto whatever
    # the setting; the request's own scheme is what the connection is.
    scheme = getattr(request, "scheme", None) or "http"
    host = environ.get("HTTP_HOST")
    origins = {f"{scheme}://{host}"} if host else set()
    if trust_proxy:
        forwarded_host = _first(environ.get("HTTP_X_FORWARDED_HOST")) or host
        forwarded_proto = _first(environ.get("HTTP_X_FORWARDED_PROTO")) or scheme
        if forwarded_host:
            origins.add(f"{forwarded_proto}://{forwarded_host}")
    return origins


def _first(value: Any) -> str | None:
    """The first hop of a comma-separated forwarded header (the client's side)."""
    if not isinstance(value, str):
        return None
    return value.split(",", 1)[0].strip() or None


def client_address(environ: Mapping[str, Any], *, trust_proxy: bool) -> str:
    """The client's address for a request's (WSGI-style) environ: the first hop of
    ``X-Forwarded-For`` behind a trusted proxy, else the peer's address
    (``REMOTE_ADDR``, which the transport sets from aiohttp's). ``"unknown"``
    when neither says."""
    if trust_proxy:
        forwarded = _first(environ.get("HTTP_X_FORWARDED_FOR"))
        if forwarded:
            return forwarded
    remote = environ.get("REMOTE_ADDR")
    return remote if isinstance(remote, str) and remote else "unknown"


def client_address_reader(settings: Settings) -> Callable[[Mapping[str, Any]], str]:
    """``client_address`` bound to ``TRUST_PROXY``: what the transport's per-address
    limits are given (the transport knows nothing of settings)."""
    return functools.partial(client_address, trust_proxy=settings.trust_proxy)


def create_app(settings: Settings, *, storage: Store | None = None) -> web.Application:
    """Build the app; nothing connects until the app starts (``cleanup_ctx``)."""
    if storage is None:
        storage = make_store(settings.mongodb_uri, settings.mongodb_db)
        if settings.demo:
            seed_demo(storage)

    cluster = None
    if settings.redis_url:
        cluster = Cluster(settings)
        cluster.fill_gaps_from(storage)
    sio = FastSocketServer(
        async_mode="aiohttp",
        # Socket.IO packets decode with SafeJSON (StrictPacket.json); Engine.IO's
        # own packets keep Engine.IO's parser, whose errors its upgrade probe needs.
        serializer=StrictPacket,
        client_manager=cluster.manager if cluster else FastManager(),
        cors_allowed_origins=origin_checker(settings),
        max_http_buffer_size=MAX_PACKET_BYTES,
        connect_timeout=settings.connect_timeout_s,
        max_pending_per_address=settings.max_pending_per_ip,
        client_address=client_address_reader(settings),
        binary_refusal=invalid({"_payload": ["Binary data is not accepted: no event carries it."]}).envelope(),
        logger=library_logger("socketio.server"),
        engineio_logger=library_logger("engineio.server"),
    )
    sio.eio.set_frame_budget(settings.frame_budget_per_s)
    # What a session reads of its handshake's headers after the handshake: the token
    # (token_from_handshake) and the forwarded address (client_address). A browser's
    # other headers (cookies, user agent, languages) would be kept for the connection's life.
    sio.eio.session_headers = frozenset({"HTTP_AUTHORIZATION", "HTTP_X_FORWARDED_FOR"})

    verifier = TokenVerifier(
        TokenConfig(
            key=settings.jwt_key,
            algorithms=settings.jwt_algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            moderator_claim=settings.jwt_moderator_claim,
        )
    )
    presence = cluster.presence if cluster else LocalPresence()
    metrics = Metrics()
    if cluster is not None:
        metrics.queue(cluster.manager)
    sender = _webhook_sender(settings, storage, metrics)
    notifier = None if sender is None else Notifier(sender.outbox, presence, written=sender.wake)
    files = GridFSAttachments(lambda: storage.database) if isinstance(storage, MongoStore) else MemoryAttachments()
    chat = ChatService(storage, notifier=notifier, attachments=files)
    chat.groups_cost_most = max(1, settings.rate_limits.other.burst // 10)
    events = ChatEvents(
        sio,
        chat,
        verifier,
        presence=presence,
        limiter=cluster.limiter if cluster else LocalLimiter(settings.rate_limits),
        observer=metrics,
        max_connections_per_user=settings.max_connections_per_user,
        on_joined=cluster.manager.joined if cluster else None,
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
    if sender is not None:
        app[WEBHOOKS] = sender
    app[MEMBERSHIP] = MembershipWatch(
        events.membership,
        storage,
        poll_s=settings.membership_poll_s,
        change_stream=settings.membership_change_stream,
        cluster=cluster,
    )
    sio.attach(app)
    platform_api.setup_routes(app)  # before the page's routes: their OPTIONS answer covers these too
    attachments.setup_attachment_routes(app)
    http.setup_routes(app, STATIC_DIR)
    add_metrics_route(app, metrics, token=settings.metrics_token)
    app[ATTACHMENTS] = files
    app.cleanup_ctx.append(_storage_lifecycle)
    app.cleanup_ctx.append(_attachments_lifecycle)
    app.cleanup_ctx.append(_webhook_lifecycle)  # inside the storage's: stops before the store closes
    app.cleanup_ctx.append(_membership_lifecycle)
    app.on_shutdown.append(_close_transports)
    return app


async def _storage_lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    backfill = None
    if isinstance(store, MongoStore):
        # Messages stored before revisions (or search) existed get theirs while the server serves.
        backfill = asyncio.ensure_future(_backfill(store))
    try:
        if CLUSTER in app:
            async for _ in app[CLUSTER].lifecycle(app[EVENTS]):
                yield
        else:
            yield
    finally:
        if backfill is not None:
            backfill.cancel()
            await asyncio.gather(backfill, return_exceptions=True)
        await store.close()


async def _attachments_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The attachment store (on the open message store) and its orphan sweep."""
    await app[ATTACHMENTS].open()
    sweeper = asyncio.ensure_future(attachments.orphan_sweeper(app))
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await app[ATTACHMENTS].close()


async def _backfill(store: MongoStore) -> None:
    await backfill_in_background(store)
    await mongo_search.backfill_in_background(store.database)


def _webhook_sender(settings: Settings, storage: Store, metrics: Metrics) -> WebhookSender | None:
    """The webhook sender, its outbox beside ``storage``; ``None`` unless
    ``WEBHOOK_URL`` and ``WEBHOOK_SECRET`` are set."""
    if not settings.webhooks:
        return None
    assert settings.webhook_url is not None and settings.webhook_secret is not None
    outbox = make_outbox(storage)
    sender = WebhookSender(
        outbox,
        url=settings.webhook_url,
        secret=settings.webhook_secret,
        max_age_s=settings.webhook_max_age_s,
        timeout_s=settings.webhook_timeout_s,
        observer=metrics,
    )

    async def outbox_stats() -> None:
        stats = await outbox.stats()
        age = 0.0 if stats.oldest_created_at is None else max(0.0, time.time() - stats.oldest_created_at)
        metrics.outbox(stats.depth, age)

    metrics.before_scrape.append(outbox_stats)
    return sender


async def _webhook_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Deliver webhooks while the app serves (only when they are configured)."""
    sender = app.get(WEBHOOKS)
    if sender is None:
        yield
        return
    await sender.outbox.open()
    await sender.start()
    try:
        yield
    finally:
        await sender.stop()


async def _membership_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Following membership changes, once storage (and the queue) are open."""
    async for _ in app[MEMBERSHIP].lifecycle():
        yield


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
    await app[EVENTS].expiry.close()
