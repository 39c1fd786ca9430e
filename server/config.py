"""Settings: the only reader of the environment.

The table in ``SETTINGS`` is the README's settings table; ``tests/test_config.py``
keeps the two in step.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Mapping

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
    "REDIS_URL": ("Redis message queue shared by several nodes", "unset: one node"),
    "CORS_ORIGINS": ("comma-separated extra origins allowed for Socket.IO and HTTP", "none"),
    "LOG_LEVEL": ("logging level", "`INFO`"),
    "LOG_FORMAT": ("`text` or `json` (one JSON object per line)", "`text`"),
    "RATE_LIMIT_SEND_PER_S": ("`send_message` refill rate per user (0 turns the limit off)", "`20`"),
    "RATE_LIMIT_SEND_BURST": ("`send_message` bucket size per user", "`200`"),
    "RATE_LIMIT_EVENTS_PER_S": ("refill rate per user for every other event and HTTP request", "`50`"),
    "RATE_LIMIT_EVENTS_BURST": ("bucket size per user for every other event and HTTP request", "`300`"),
    "SHUTDOWN_GRACE_S": ("seconds SIGTERM waits for in-flight work before closing", "`20`"),
    "PRESENCE_TTL_S": ("with Redis: seconds after which a dead node's users count as offline", "`15`"),
    "FRAME_BUDGET_PER_S": (
        (
            "Engine.IO frames (WebSocket) or packets (polling) one connection may send per second, "
            "averaged over 10 s; a connection over it is closed (0 turns the budget off)"
        ),
        "`5000`",
    ),
}


class ConfigError(Exception):
    """Missing or contradictory settings; the message names every one of them."""


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
    redis_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"
    demo: bool = False
    rate_limits: RateLimits = RateLimits()
    shutdown_grace_s: float = 20.0
    presence_ttl_s: float = 15.0
    frame_budget_per_s: float = 5000.0

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
    ) -> "Settings":
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
            ("SHUTDOWN_GRACE_S", 20.0), ("PRESENCE_TTL_S", 15.0), ("FRAME_BUDGET_PER_S", 5000.0),
        ):
            try:
                numbers[name] = float(env.get(name, default))
                if not 0 <= numbers[name] < 1e9:
                    raise ValueError
            except ValueError:
                problems.append(f"{name} must be a non-negative number, not {env[name]!r}")
                numbers[name] = default
        common = dict(
            rate_limits=RateLimits(
                send=Bucket(numbers["RATE_LIMIT_SEND_PER_S"], int(numbers["RATE_LIMIT_SEND_BURST"])),
                other=Bucket(numbers["RATE_LIMIT_EVENTS_PER_S"], int(numbers["RATE_LIMIT_EVENTS_BURST"])),
            ),
            shutdown_grace_s=numbers["SHUTDOWN_GRACE_S"],
            presence_ttl_s=max(1.0, numbers["PRESENCE_TTL_S"]),
            frame_budget_per_s=numbers["FRAME_BUDGET_PER_S"],
            port=port,
            redis_url=env.get("REDIS_URL"),
            cors_origins=_split(env.get("CORS_ORIGINS")),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            log_format=log_format,
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


def _db_from_uri(uri: str) -> str | None:
    """The database named in a ``mongodb://host/db?opts`` URI's path, if any."""
    if "://" not in uri or uri.startswith("memory://"):
        return None
    rest = uri.split("://", 1)[1]
    if "/" not in rest:
        return None
    path = rest.split("/", 1)[1].split("?", 1)[0]
    return path or None
