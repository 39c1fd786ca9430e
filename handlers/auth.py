"""Token verification (PyJWT) for the Socket.IO handshake and the HTTP routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from storage.base import ID_RE

from .errors import ChatError

log = logging.getLogger(__name__)

SERVICE_ROLE = "service"  # the ``role`` claim of the platform's own tokens
MAX_SERVICE_NAME = 64


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: int
    moderator: bool


@dataclass(frozen=True)
class TokenConfig:
    key: str
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None
    audience: str | None = None
    moderator_claim: str = "chat_moderator"  # ``true`` there makes the user a moderator


class TokenVerifier:
    """Checks signature, ``exp``, ``sub`` (a 24-hex user id, or a service's name) and ``iss``/``aud`` when set."""

    def __init__(self, config: TokenConfig) -> None:
        self._config = config

    def verify(self, token: Any) -> str:
        """Return the user id (lowercase hex) or raise ``ChatError('unauthorized')``
        (a service token included: services do not sign in as users)."""
        return self.identify(token).user_id

    def identify(self, token: Any) -> Identity:
        """``verify``'s user id, the token's ``exp`` (whole seconds since the epoch),
        for connections that end with their token, and whether the user moderates;
        refusals as ``verify``'s."""
        claims = self._decode(token)
        if claims.get("role") == SERVICE_ROLE:
            raise ChatError("unauthorized", "A service token cannot sign in as a user.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not ID_RE.fullmatch(sub):
            raise ChatError("unauthorized", "The token's subject is not a user id.")
        # PyJWT has checked int(exp) against the clock (so exp may also be a float
        # or a numeric string): the same int() here, which cannot fail after it.
        moderator = claims.get(self._config.moderator_claim) is True
        return Identity(sub.lower(), int(claims["exp"]), moderator)

    def verify_service(self, token: Any) -> str:
        """Return the calling service's name (the ``sub`` of a token whose ``role`` is
        ``"service"``); ``unauthorized`` for a token that is not valid, ``forbidden``
        for a valid token of a user."""
        claims = self._decode(token)
        if claims.get("role") != SERVICE_ROLE:
            raise ChatError("forbidden", "Only the platform's service tokens may do this.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SERVICE_NAME or not sub.isprintable():
            raise ChatError("unauthorized", f"The token's subject must name the service in 1 to {MAX_SERVICE_NAME} "
                                            "printable characters.")
        return sub

    def _decode(self, token: Any) -> dict[str, Any]:
        """The verified claims, or ``ChatError('unauthorized')``.

        Nothing else escapes: PyJWT raises more than ``InvalidTokenError`` for
        hostile input (``UnicodeEncodeError`` for a lone surrogate,
        ``InvalidKeyError`` for an ``alg`` of another key family), and a client
        must not be able to turn a refusal into a server error."""
        if not isinstance(token, str) or not token:
            raise ChatError("unauthorized", "A token is required.")
        cfg = self._config
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                cfg.key,
                algorithms=list(cfg.algorithms),
                issuer=cfg.issuer,
                audience=cfg.audience,
                options={"require": ["exp", "sub"], "verify_aud": cfg.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise ChatError("unauthorized", "The token has expired.") from None
        except jwt.InvalidTokenError as exc:
            raise ChatError("unauthorized", f"The token is not valid: {_safe(exc)}.") from None
        except Exception as exc:
            log.debug("token refused by %s: %s", type(exc).__name__, _safe(exc))
            raise ChatError("unauthorized", "The token is not valid.") from None
        return claims

    def issue(self, user_id: str, ttl_seconds: int = 3600) -> str:
        """Sign a token for ``user_id`` with the shared secret (HS* only)."""
        cfg = self._config
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id.lower(), "iat": now, "exp": now + ttl_seconds}
        if cfg.issuer:
            claims["iss"] = cfg.issuer
        if cfg.audience:
            claims["aud"] = cfg.audience
        return jwt.encode(claims, cfg.key, algorithm=cfg.algorithms[0])


def token_from_handshake(auth: Any, environ: Mapping[str, Any]) -> Any:
    """``auth: {token}`` first, then an ``Authorization: Bearer`` header; never the query."""
    if isinstance(auth, dict) and "token" in auth:
        return auth["token"]
    return bearer(environ.get("HTTP_AUTHORIZATION"))


def bearer(header: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` for anything else."""
    if isinstance(header, str) and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _safe(exc: BaseException) -> str:
    """An exception's text, cut short and with anything that is not valid Unicode escaped,
    so a hostile token cannot make the message (echoed to the client, logged) unencodable."""
    text = str(exc)[:200]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
