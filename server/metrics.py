"""Prometheus metrics, one registry per application (tests build many apps)."""

from __future__ import annotations

import asyncio
import bisect
import gc
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from handlers.auth import bearer
from handlers.errors import ChatError
from handlers.events import Observer

log = logging.getLogger(__name__)

REFRESH_TIMEOUT_S = 2.0
REFRESH_INTERVAL_S = 1.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics(Observer):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected = Gauge("chat_connected_clients", "Authenticated Socket.IO connections on this node.", registry=r)
        self.joined = Gauge("chat_joined_rooms", "Group rooms joined by connections on this node.", registry=r)
        # Counted on every event: kept by the event loop alone and read at each scrape
        # (prometheus_client's own metrics take a lock per update, a few µs a send).
        self._events: dict[tuple[str, str], _Count] = {}
        self._event_seconds: dict[str, _Latencies] = {}
        self._stored_seconds = _Latencies()
        self._broadcast_seconds = _Latencies()
        r.register(_EventCollector(self))
        r.register(_CollectorPauses())
        self.storage_errors = Counter("chat_storage_errors", "Operations refused as storage_unavailable.",
                                      registry=r)
        self.rate_limited = Counter("chat_rate_limited", "Requests refused as rate_limited.", registry=r)
        # Webhooks: counted by the node that settled each event; the outbox
        # figures are the whole deployment's, read from storage at each scrape.
        self.webhook_events = Counter("chat_webhook_events", "Webhook events by outcome: delivered, retried "
                                      "(an attempt failed, another is scheduled) or failed (kept as failed).",
                                      ["outcome"], registry=r)
        self.outbox_depth = Gauge("chat_webhook_outbox_depth", "Webhook events waiting to be delivered.",
                                  registry=r)
        self.outbox_oldest_age = Gauge("chat_webhook_outbox_oldest_age_seconds",
                                       "Age of the oldest webhook event waiting to be delivered (0 when none).",
                                       registry=r)
        for outcome in ("delivered", "retried", "failed"):
            self.webhook_events.labels(outcome)
        self.uploads = Counter("chat_uploads", "Attachment uploads by outcome: ok, too_large, unsupported, "
                               "rate_limited.", ["outcome"], registry=r)
        self.upload_bytes = Counter("chat_upload_bytes", "Bytes received in attachment uploads, by outcome.",
                                    ["outcome"], registry=r)
        for outcome in ("ok", "too_large", "unsupported", "rate_limited"):
            self.uploads.labels(outcome)
            self.upload_bytes.labels(outcome)
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []
        self._refreshed_at = float("-inf")

    def queue(self, manager: QueueFigures) -> None:
        """Export the Redis queue's figures, read from ``manager`` at each scrape."""
        self.registry.register(_QueueCollector(manager))

    def event(self, event: str, outcome: str, seconds: float) -> None:
        count = self._events.get((event, outcome))
        if count is None:
            count = self._events[(event, outcome)] = _Count()
        count.value += 1
        latencies = self._event_seconds.get(event)
        if latencies is None:
            latencies = self._event_seconds[event] = _Latencies()
        latencies.observe(seconds)
        if outcome == "storage_unavailable":
            self.storage_errors.inc()
        elif outcome == "rate_limited":
            self.rate_limited.inc()

    def connections(self, delta: int) -> None:
        self.connected.inc(delta)

    def rooms(self, delta: int) -> None:
        self.joined.inc(delta)

    def send_stored(self, seconds: float) -> None:
        self._stored_seconds.observe(seconds)

    def send_broadcast(self, seconds: float) -> None:
        self._broadcast_seconds.observe(seconds)

    def upload(self, outcome: str, size: int) -> None:
        self.uploads.labels(outcome).inc()
        self.upload_bytes.labels(outcome).inc(size)

    def webhook(self, outcome: str) -> None:
        self.webhook_events.labels(outcome).inc()

    def outbox(self, depth: int, oldest_age_s: float) -> None:
        self.outbox_depth.set(depth)
        self.outbox_oldest_age.set(oldest_age_s)

    async def refresh(self) -> None:
        """Read what is measured at scrape time (each source at most ``REFRESH_TIMEOUT_S``;
        at most once per ``REFRESH_INTERVAL_S``, however often ``/metrics`` is asked)."""
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_INTERVAL_S:
            return
        self._refreshed_at = now
        for read in self.before_scrape:
            try:
                await asyncio.wait_for(read(), REFRESH_TIMEOUT_S)
            except Exception as exc:  # the last values stay; the scrape still answers
                log.warning("metrics: could not refresh: %s", exc)


class _Count:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Latencies:
    """A histogram over ``LATENCY_BUCKETS``, each updated from one place (the event loop, or the
    garbage collector's callbacks, which never overlap): no lock."""

    __slots__ = ("counts", "total", "created")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add_to(self, family: HistogramMetricFamily, labels: dict[str, str]) -> None:
        """Export as prometheus_client's own histogram would: cumulative buckets, sum, created."""
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        cumulative, running = [], 0
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(list(labels.values()), cumulative, self.total)
        family.samples.append(Sample(family.name + "_created", labels, self.created, None))


class _EventCollector(Collector):
    """``chat_events``, ``chat_event_duration_seconds``, ``chat_send_stored_seconds`` and
    ``chat_send_broadcast_seconds``, read from ``Metrics`` at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        events = CounterMetricFamily("chat_events", "Client events handled, by event name and outcome code.",
                                     labels=["event", "outcome"])
        for (event, outcome), count in list(m._events.items()):
            events.add_metric([event, outcome], float(count.value), created=count.created)
        yield events
        durations = HistogramMetricFamily("chat_event_duration_seconds", "Time to answer a client event.",
                                          labels=["event"])
        for event, latencies in list(m._event_seconds.items()):
            latencies.add_to(durations, {"event": event})
        yield durations
        for name, doc, latencies in (
            ("chat_send_stored_seconds", "send_message: received to stored.", m._stored_seconds),
            ("chat_send_broadcast_seconds", "send_message: received to broadcast handed to every recipient.",
             m._broadcast_seconds),
        ):
            family = HistogramMetricFamily(name, doc, labels=[])
            latencies.add_to(family, {})
            yield family


class _GcWatch:
    """How long each of the process's garbage collections held the event loop, by generation.

    One per process (``gc.callbacks`` is process-wide), installed by the first ``Metrics``. The
    collector runs with the GIL held, so its callbacks never overlap.
    """

    installed: _GcWatch | None = None

    def __init__(self) -> None:
        self.pauses = [_Latencies() for _ in range(3)]
        self._started = 0.0
        gc.callbacks.append(self._observe)

    @classmethod
    def get(cls) -> _GcWatch:
        if cls.installed is None:
            cls.installed = cls()
        return cls.installed

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)


class _CollectorPauses(Collector):
    """``chat_gc_pause_seconds`` and ``chat_gc_frozen_objects``."""

    def __init__(self) -> None:
        self._watch = _GcWatch.get()

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "chat_gc_pause_seconds", "Python garbage collections of this process by generation (2 = full), "
            "each as long as it held the event loop.", labels=["generation"])
        for generation, pauses in enumerate(self._watch.pauses):
            pauses.add_to(family, {"generation": str(generation)})
        yield family
        yield GaugeMetricFamily("chat_gc_frozen_objects", "Objects left out of later collections (gc.freeze): "
                                "what start-up made, and what each full collection left.", value=gc.get_freeze_count())


class QueueFigures(Protocol):
    received: int
    published: int

    def queue_figures(self) -> tuple[int, int]:
        """Group channels listened to now; channels subscribed again after they were lost."""


class _QueueCollector(Collector):
    def __init__(self, manager: QueueFigures) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        channels, resubscribed = self._manager.queue_figures()
        yield CounterMetricFamily("chat_redis_received_messages", "Messages this node read from Redis "
                                  "(its own publishes on channels it listens to included).",
                                  value=self._manager.received)
        yield CounterMetricFamily("chat_redis_published_messages", "Messages this node published to Redis.",
                                  value=self._manager.published)
        yield GaugeMetricFamily("chat_redis_group_channels", "Group channels this node listens to.", value=channels)
        yield CounterMetricFamily("chat_redis_resubscribed_channels", "Channels subscribed again after their "
                                  "connection or hash slot was lost, or confirmed after a join stopped waiting "
                                  "(each followed by a read from storage).",
                                  value=resubscribed)


def add_route(app: web.Application, metrics: Metrics, *, token: str | None = None) -> None:
    """``GET /metrics``; with ``token`` (``METRICS_TOKEN``), only for ``Authorization: Bearer <token>``."""
    export = make_aiohttp_handler(metrics.registry)

    async def serve(request: web.Request) -> web.StreamResponse:
        await metrics.refresh()
        return await export(request)

    if token is None:
        app.router.add_get("/metrics", serve)
        return
    expected = token.encode()

    async def protected(request: web.Request) -> web.StreamResponse:
        given = bearer(request.headers.get("Authorization"))
        # compare_digest: the time taken says nothing about how much of the token matched.
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            error = ChatError("unauthorized", "/metrics needs Authorization: Bearer <METRICS_TOKEN>.")
            return web.json_response(error.envelope(), status=error.http_status,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await serve(request)

    app.router.add_get("/metrics", protected)
