"""One signed-in Socket.IO connection, the per-user count of them, and handshake refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

import socketio


@dataclass(slots=True)
class Connection:
    sid: str
    user_id: str
    name: str | None  # None until the users document could be read
    groups: set[str] = field(default_factory=set)
    closed: bool = False  # set by the disconnect handler; an event still running undoes its effects
    expires_at: int = 0  # the token's exp: the connection ends then (SessionExpiry)
    warned: bool = False  # session_expiring was sent for expires_at
    moderator: bool = False  # the token's moderator claim


class ConnectionSlots:
    """Connections each user holds on this node, handshakes in progress included
    (so simultaneous ones cannot overshoot ``MAX_CONNECTIONS_PER_USER``)."""

    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self._held: dict[str, int] = {}

    def take(self, user_id: str) -> None:
        """Count one more connection of the user on this node, or refuse it."""
        held = self._held.get(user_id, 0)
        if held >= self.max_per_user:
            raise HandshakeRefused(
                "too_many_connections",
                f"This user already has {held} connections open on this server; close one first.",
            )
        self._held[user_id] = held + 1

    def give_back(self, user_id: str | None) -> None:
        """Give back a slot ``take`` counted (nothing for ``None``)."""
        if user_id is None:
            return
        left = self._held[user_id] - 1
        if left:
            self._held[user_id] = left
        else:
            del self._held[user_id]


class HandshakeRefused(Exception):
    """A handshake refusal with a code of its own (not an ack error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def refusal(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    """What reaches ``connect_error``: the message, and ``data`` ``{code, message}``
    (with one argument python-socketio sends no ``data``)."""
    return socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})
