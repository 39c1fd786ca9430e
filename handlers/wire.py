"""How Socket.IO packets are decoded: input Python cannot parse still gets an answer.

python-socketio drops an event whose JSON its parser rejects (nesting deeper than
the recursion limit, integers over 4,300 digits) and gets stuck on a binary
event whose placeholders do not match its attachments. Both are valid enough on
the wire for a client to wait for an ack, so they are decoded here into an event
that the error boundary answers with ``invalid_payload``.
"""

from __future__ import annotations

import json
from typing import Any

from socketio import packet

# Event name that stands for a packet whose payload could not be decoded.
UNDECODABLE_EVENT = "\x00undecodable"


class Undecodable:
    """Stands in for a payload that could not be rebuilt."""

    def __repr__(self) -> str:
        return "<undecodable payload>"


class SafeJSON:
    """The standard ``json`` module, except that ``loads`` never raises on a frame."""

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return json.dumps(obj, **kwargs)

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        try:
            return json.loads(text, **kwargs)
        except (ValueError, RecursionError):
            return [UNDECODABLE_EVENT]


class StrictPacket(packet.Packet):
    """A packet whose binary attachments that do not fit become ``Undecodable``."""

    @classmethod
    def reconstruct_binary(cls, data: Any, attachments: list[bytes]) -> Any:
        try:
            return super().reconstruct_binary(data, attachments)
        except (IndexError, KeyError, TypeError, RecursionError):
            if isinstance(data, list) and data and isinstance(data[0], str):
                return [data[0], Undecodable()]
            return [UNDECODABLE_EVENT]
