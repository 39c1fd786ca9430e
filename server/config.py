"""Settings: the only reader of the environment.

The table in ``SETTINGS`` is the README's settings table; ``tests/test_config.py``
keeps the two in step.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from cluster.rate_limits import Bucket, RateLimits

DEFAULT_PORT = 8000
DEFAULT_DB = "learnify"

# name -> (meaning, default as documented)
SETTINGS: dict[str, tuple[str, str]] = {
    "PORT": ("TCP port to listen on", "8000"),
    "HOST": ("interface to listen on", "all interfaces"),
    "MONGODB_URI": (
        "MongoDB connection string; `memory://` selects the embedded in-memory store",
        "required unless `--demo`",
    ),
    "MONGODB_DB": ("database name (else the URI's path, else `learnify`)", "`learnify`"),
    "JWT_SECRET": ("HS256 key for handshake and HTTP tokens", "this or `JWT_PUBLIC_KEY` required"),
    "JWT_PUBLIC_KEY": ("PEM public key to verify RS256/ES256 tokens instead of a secret", "unset"),
    "JWT_ALGORITHMS": ("comma-separated accepted algorithms", "`HS256` with a secret, `RS256` with a key"),
    "JWT_ISSUER": ("required `iss` claim", "unset (not checked)"),
    "JWT_AUDIENCE": ("required `aud` claim", "unset (not checked)"),
    "JWT_MODERATOR_CLAIM": (
        "claim that marks a moderator (when `true`: may delete any message, pin, accept answers)",
        "`chat_moderator`",
    ),
    "REDIS_URL": (
        "Redis message queue shared by several nodes (`redis+sentinel://host:port[,host:port]/service` "
        "follows the master that Redis Sentinel names)",
        "unset: one node",
    ),
    "REDIS_CLUSTER": ("`true` when `REDIS_URL` names a node of a Redis Cluster (7+): sharded pub/sub", "`false`"),
    "REDIS_CHANNELS": (
        "`group`: a channel per group, a node listens only to its groups' ones; `single`: one channel for "
        "everything, as nodes before per-group channels (for a rolling upgrade from them)",
        "`group`",
    ),
    "REDIS_CHANNEL_LINGER_S": ("seconds a node keeps listening to a group after its last connection there left", "`30`"),
    "CORS_ORIGINS": ("comma-separated extra origins allowed for Socket.IO and HTTP", "none"),
    "LOG_LEVEL": ("logging level", "`INFO`"),
    "LOG_FORMAT": ("`text` or `json` (one JSON object per line)", "`text`"),
    "RATE_LIMIT_SEND_PER_S": ("`send_message` refill rate per user (0 turns the limit off)", "`20`"),
    "RATE_LIMIT_SEND_BURST": ("`send_message` bucket size per user (a whole number)", "`200`"),
    "RATE_LIMIT_EVENTS_PER_S": ("refill rate per user for every other event and HTTP request", "`50`"),
    "RATE_LIMIT_EVENTS_BURST": ("bucket size per user for every other event and HTTP request (a whole number)", "`300`"),
    "RATE_LIMIT_UPLOADS_PER_S": ("attachment uploads refill rate per user (0 turns the limit off)", "`0.5`"),
    "RATE_LIMIT_UPLOADS_BURST": ("attachment uploads bucket size per user (a whole number)", "`30`"),
    "RATE_LIMIT_UPLOAD_BYTES_PER_S": ("uploaded bytes refill rate per user (0 turns the limit off)", "`1048576` (1 MiB)"),
    "RATE_LIMIT_UPLOAD_BYTES_BURST": ("uploaded bytes bucket size per user (a whole number)", "`209715200` (200 MiB)"),
    "ATTACHMENT_MAX_BYTES": ("largest file one upload may carry; a larger one is answered 413", "`10485760` (10 MiB)"),
    "ATTACHMENT_ORPHAN_TTL_S": ("seconds an upload no message uses is kept before it is removed", "`3600`"),
    "SHUTDOWN_GRACE_S": ("seconds SIGTERM waits for in-flight work before closing", "`20`"),
    "PRESENCE_TTL_S": ("with Redis: seconds after which a dead node's users count as offline", "`15`"),
    "MAX_CONNECTIONS_PER_USER": (
        (
            "authenticated connections one user may hold on each node; the next is refused "
            "with `connect_error` code `too_many_connections`"
        ),
        "`20`",
    ),
    "TRUST_PROXY": (
        "`true` to read `X-Forwarded-For`/`-Host`/`-Proto` (only behind a proxy that sets them)",
        "`false`",
    ),
    "METRICS_TOKEN": ("when set, `/metrics` needs `Authorization: Bearer <METRICS_TOKEN>`", "unset (open)"),
    "CONNECT_TIMEOUT_S": ("seconds a connection may stay open without a signed-in Socket.IO CONNECT", "`10`"),
    "MAX_PENDING_PER_IP": (
        "connections per client address not signed in yet; the next handshake is refused (0 turns the cap off)",
        "`50`",
    ),
    "FRAME_BUDGET_PER_S": (
        (
            "Engine.IO frames (WebSocket) or packets (polling) one connection may send per second, "
            "averaged over 10 s; a connection over it is closed (0 turns the budget off)"
        ),
        "`5000`",
    ),
    "WEBHOOK_URL": (
        "where to POST notifications for people not connected (Standard Webhooks); with `WEBHOOK_SECRET`",
        "unset (no webhooks)",
    ),
    "WEBHOOK_SECRET": (
        "Standard Webhooks signing secret: base64, optionally `whsec_`-prefixed; with `WEBHOOK_URL`",
        "unset",
    ),
    "WEBHOOK_MAX_AGE_S": ("seconds an undelivered webhook is retried before it is kept as failed", "`86400`"),
    "WEBHOOK_TIMEOUT_S": ("seconds one webhook request may take", "`10`"),
    "MEMBERSHIP_POLL_S": (
        "seconds between re-reads of the connected users' memberships where no change stream is followed",
        "`5`",
    ),
    "MEMBERSHIP_CHANGE_STREAM": (
        (
            "`auto` follows the `study_groups` change stream where MongoDB has one (polling until it runs); "
            "`off` always polls"
        ),
        "`auto`",
    ),
}


class ConfigError(Exception):
    """Missing or contradictory settings; the message names every one of them."""


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    """The whole number ``name`` holds (``default`` when unset); a problem named otherwise."""
    if name not in env:
        return default
    try:
        value = int(env[name])
        if low <= value <= high:
            return value
    except ValueError:
        pass
    problems.append(f"{name} must be a whole number from {low} to {high}, not {env[name]!r}")
    return default


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    mongodb_uri: str = "memory://"
    mongodb_db: str = DEFAULT_DB
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_moderator_claim: str = "chat_moderator"
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_channels: str = "group"
    redis_channel_linger_s: float = 30.0
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"
    demo: bool = False
    rate_limits: RateLimits = RateLimits()
    attachment_max_bytes: int = 10 * 1024 * 1024
    attachment_orphan_ttl_s: float = 3600.0
    shutdown_grace_s: float = 20.0
    presence_ttl_s: float = 15.0
    max_connections_per_user: int = 20
    trust_proxy: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    max_pending_per_ip: int = 50
    frame_budget_per_s: float = 5000.0
    membership_poll_s: float = 5.0
    membership_change_stream: bool = True
    webhook_url: str | None = field(default=None, repr=False)  # may carry a token of its own
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_max_age_s: float = 86400.0
    webhook_timeout_s: float = 10.0

    @property
    def webhooks(self) -> bool:
        """Whether webhooks are sent (both ``WEBHOOK_URL`` and ``WEBHOOK_SECRET`` set)."""
        return bool(self.webhook_url and self.webhook_secret)

    @property
    def jwt_key(self) -> str:
        return self.jwt_public_key or self.jwt_secret or ""

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        demo: bool = False,
        require: frozenset[str] = frozenset({"storage", "auth"}),
    ) -> Settings:
        """Read settings; raise ``ConfigError`` naming every missing or bad one.

        ``require`` names what the command needs: ``storage`` (``MONGODB_URI``)
        and/or ``auth`` (a JWT key); ``token`` needs only a secret.
        """
        env = {k: v for k, v in environ.items() if v != ""}
        problems: list[str] = []

        port = DEFAULT_PORT
        if "PORT" in env:
            try:
                port = int(env["PORT"])
                if not 0 <= port <= 65535:
                    raise ValueError
            except ValueError:
                problems.append(f"PORT must be a TCP port number, not {env['PORT']!r}")

        log_format = env.get("LOG_FORMAT", "text").lower()
        if log_format not in ("text", "json"):
            problems.append(f"LOG_FORMAT must be 'text' or 'json', not {env['LOG_FORMAT']!r}")

        numbers: dict[str, float] = {}
        for name, default in (
            ("RATE_LIMIT_SEND_PER_S", 20.0), ("RATE_LIMIT_SEND_BURST", 200.0),
            ("RATE_LIMIT_EVENTS_PER_S", 50.0), ("RATE_LIMIT_EVENTS_BURST", 300.0),
            ("RATE_LIMIT_UPLOADS_PER_S", 0.5), ("RATE_LIMIT_UPLOADS_BURST", 30.0),
            ("RATE_LIMIT_UPLOAD_BYTES_PER_S", 1024.0 * 1024), ("RATE_LIMIT_UPLOAD_BYTES_BURST", 200.0 * 1024 * 1024),
            ("ATTACHMENT_ORPHAN_TTL_S", 3600.0), ("SHUTDOWN_GRACE_S", 20.0), ("PRESENCE_TTL_S", 15.0), ("CONNECT_TIMEOUT_S", 10.0),
            ("FRAME_BUDGET_PER_S", 5000.0), ("MEMBERSHIP_POLL_S", 5.0), ("REDIS_CHANNEL_LINGER_S", 30.0),
        ):
            try:
                numbers[name] = float(env.get(name, default))
                if not 0 <= numbers[name] < 1e9:
                    raise ValueError
            except ValueError:
                problems.append(f"{name} must be a non-negative number, not {env[name]!r}")
                numbers[name] = default
        for kind in ("SEND", "EVENTS", "UPLOADS", "UPLOAD_BYTES"):
            # A fractional burst would round down, to 0 below 1: the limit off, silently.
            burst, rate = numbers[f"RATE_LIMIT_{kind}_BURST"], numbers[f"RATE_LIMIT_{kind}_PER_S"]
            if burst != int(burst) or (burst < 1 and rate > 0):
                problems.append(
                    f"RATE_LIMIT_{kind}_BURST must be a whole number of at least 1, not "
                    f"{env[f'RATE_LIMIT_{kind}_BURST']!r} (RATE_LIMIT_{kind}_PER_S=0 turns the limit off)"
                )
        max_per_user = _whole(env, "MAX_CONNECTIONS_PER_USER", 20, 1, 1_000_000, problems)
        attachment_max = _whole(env, "ATTACHMENT_MAX_BYTES", 10 * 1024 * 1024, 1, 1 << 40, problems)
        if numbers["ATTACHMENT_ORPHAN_TTL_S"] < 1:
            problems.append("ATTACHMENT_ORPHAN_TTL_S must be at least 1 second")

        trust = env.get("TRUST_PROXY", "false").strip().lower()
        if trust not in _TRUE + _FALSE:
            problems.append(f"TRUST_PROXY must be 'true' or 'false', not {env['TRUST_PROXY']!r}")

        redis_cluster = env.get("REDIS_CLUSTER", "false").strip().lower()
        if redis_cluster not in _TRUE + _FALSE:
            problems.append(f"REDIS_CLUSTER must be 'true' or 'false', not {env['REDIS_CLUSTER']!r}")
        if redis_cluster in _TRUE and env.get("REDIS_URL", "").split("://")[0].endswith("+sentinel"):
            problems.append("REDIS_CLUSTER=true needs REDIS_URL to name a cluster node, not sentinels")
        redis_channels = env.get("REDIS_CHANNELS", "group").strip().lower()
        if redis_channels not in ("group", "single"):
            problems.append(f"REDIS_CHANNELS must be 'group' or 'single', not {env['REDIS_CHANNELS']!r}")

        max_pending = _whole(env, "MAX_PENDING_PER_IP", 50, 0, 1_000_000, problems)
        if numbers["CONNECT_TIMEOUT_S"] <= 0:
            problems.append("CONNECT_TIMEOUT_S must be more than 0 seconds")
        if numbers["MEMBERSHIP_POLL_S"] < 0.1:
            problems.append("MEMBERSHIP_POLL_S must be at least 0.1 seconds")
        change_stream = env.get("MEMBERSHIP_CHANGE_STREAM", "auto").strip().lower()
        if change_stream not in ("auto", "off"):
            problems.append(f"MEMBERSHIP_CHANGE_STREAM must be 'auto' or 'off', not {env['MEMBERSHIP_CHANGE_STREAM']!r}")
        common: dict[str, Any] = dict(
            rate_limits=RateLimits(
                send=Bucket(numbers["RATE_LIMIT_SEND_PER_S"], int(numbers["RATE_LIMIT_SEND_BURST"])),
                other=Bucket(numbers["RATE_LIMIT_EVENTS_PER_S"], int(numbers["RATE_LIMIT_EVENTS_BURST"])),
                upload=Bucket(numbers["RATE_LIMIT_UPLOADS_PER_S"], int(numbers["RATE_LIMIT_UPLOADS_BURST"])),
                upload_bytes=Bucket(
                    numbers["RATE_LIMIT_UPLOAD_BYTES_PER_S"], int(numbers["RATE_LIMIT_UPLOAD_BYTES_BURST"])
                ),
            ),
            attachment_max_bytes=attachment_max,
            attachment_orphan_ttl_s=numbers["ATTACHMENT_ORPHAN_TTL_S"],
            shutdown_grace_s=numbers["SHUTDOWN_GRACE_S"],
            presence_ttl_s=max(1.0, numbers["PRESENCE_TTL_S"]),
            connect_timeout_s=numbers["CONNECT_TIMEOUT_S"],
            max_pending_per_ip=max_pending,
            frame_budget_per_s=numbers["FRAME_BUDGET_PER_S"],
            membership_poll_s=numbers["MEMBERSHIP_POLL_S"],
            membership_change_stream=change_stream == "auto",
            port=port,
            redis_url=env.get("REDIS_URL"),
            redis_cluster=redis_cluster in _TRUE,
            redis_channels=redis_channels,
            redis_channel_linger_s=numbers["REDIS_CHANNEL_LINGER_S"],
            cors_origins=_split(env.get("CORS_ORIGINS")),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            log_format=log_format,
            max_connections_per_user=max_per_user,
            trust_proxy=trust in _TRUE,
            metrics_token=env.get("METRICS_TOKEN"),
            jwt_moderator_claim=env.get("JWT_MODERATOR_CLAIM") or "chat_moderator",
            **_webhook_settings(env, problems),
        )

        if demo:
            if problems:
                raise ConfigError("; ".join(problems))
            # The demo signs its own tokens with a fresh key every run.
            return cls(
                host="127.0.0.1",
                mongodb_uri="memory://",
                jwt_secret=secrets.token_urlsafe(48),
                demo=True,
                **common,
            )

        uri = env.get("MONGODB_URI")
        if uri is None and "storage" in require:
            problems.append("MONGODB_URI is required (a mongodb:// URI, or memory:// for the embedded store)")
        secret, public_key = env.get("JWT_SECRET"), env.get("JWT_PUBLIC_KEY")
        if secret is None and public_key is None and "auth" in require:
            problems.append("JWT_SECRET (or JWT_PUBLIC_KEY) is required to verify tokens")
        if secret is not None and public_key is not None:
            problems.append("JWT_SECRET and JWT_PUBLIC_KEY are both set; set only one")
        default_algs = ("RS256",) if public_key else ("HS256",)
        algorithms = _split(env.get("JWT_ALGORITHMS")) or default_algs
        if secret is not None and public_key is None and any(not a.startswith("HS") for a in algorithms):
            problems.append("JWT_ALGORITHMS with JWT_SECRET must be HMAC algorithms (HS256/HS384/HS512)")
        if public_key is not None and any(a.startswith("HS") for a in algorithms):
            problems.append("JWT_ALGORITHMS with JWT_PUBLIC_KEY must be public-key algorithms (RS256/ES256/...)")
        if problems:
            raise ConfigError("; ".join(problems))

        uri = uri or "memory://"
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            mongodb_uri=uri,
            mongodb_db=env.get("MONGODB_DB") or _db_from_uri(uri) or DEFAULT_DB,
            jwt_secret=secret,
            jwt_public_key=public_key,
            jwt_algorithms=algorithms,
            jwt_issuer=env.get("JWT_ISSUER"),
            jwt_audience=env.get("JWT_AUDIENCE"),
            **common,
        )


def _webhook_settings(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """``WEBHOOK_*``: both the URL and the secret, or neither."""
    url, secret = env.get("WEBHOOK_URL"), env.get("WEBHOOK_SECRET")
    if (url is None) != (secret is None):
        given, missing = ("WEBHOOK_URL", "WEBHOOK_SECRET") if secret is None else ("WEBHOOK_SECRET", "WEBHOOK_URL")
        problems.append(f"{missing} is required when {given} is set")
    if url is not None:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            problems.append(f"WEBHOOK_URL must be an http:// or https:// URL, not {url!r}")
    if secret is not None:
        try:
            Webhook(secret)
        except Exception:  # the library raises binascii.Error, ValueError or its own errors
            problems.append("WEBHOOK_SECRET must be a Standard Webhooks secret: base64, optionally whsec_-prefixed")
    values: dict[str, Any] = {"webhook_url": url, "webhook_secret": secret}
    for name, key, default in (("WEBHOOK_MAX_AGE_S", "webhook_max_age_s", 86400.0),
                               ("WEBHOOK_TIMEOUT_S", "webhook_timeout_s", 10.0)):
        try:
            values[key] = float(env.get(name, default))
            if not 0 < values[key] < 1e9:
                raise ValueError
        except ValueError:
            problems.append(f"{name} must be a number of seconds above 0, not {env[name]!r}")
            values[key] = default
    return values


def _db_from_uri(uri: str) -> str | None:
    """The database named in a ``mongodb://host/db?opts`` URI's path, if any."""
    if "://" not in uri or uri.startswith("memory://"):
        return None
    rest = uri.split("://", 1)[1]
    if "/" not in rest:
        return None
    path = rest.split("/", 1)[1].split("?", 1)[0]
    return path or None
