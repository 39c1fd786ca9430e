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

import orjson
from socketio import packet

# Event name that stands for a packet whose payload could not be decoded.
UNDECODABLE_EVENT = "\x00undecodable"
# What the standard module refuses to encode, orjson refuses too (instead of
# writing its own forms for dates and dataclasses).
_ORJSON_LIKE_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class Undecodable:
    """Stands in for a payload that could not be rebuilt."""

    def __repr__(self) -> str:
        return "<undecodable payload>"


class SafeJSON:
    """The JSON module of every packet: orjson, with the standard ``json`` module
    behind it for what orjson refuses, and a ``loads`` that never raises on a frame.

    ``dumps`` writes compact JSON (orjson has no other form; python-socketio asks
    for compact separators anyway) with non-ASCII characters as UTF-8 rather than
    ``\\u`` escapes. Values orjson cannot encode (integers beyond 64 bits, keys
    that are not strings) and text it rejects (``NaN``, lone surrogates, nesting
    past 1,024 levels) go to the standard module, so what is accepted and how it
    decodes is the standard module's.
    """

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        if not kwargs.keys() - {"separators"}:
            try:
                return orjson.dumps(obj, option=_ORJSON_LIKE_STDLIB).decode()
            except TypeError:  # orjson.JSONEncodeError
                pass
        kwargs.setdefault("separators", (",", ":"))
        return json.dumps(obj, **kwargs)

    @staticmethod
    def dumpb(obj: Any) -> bytes:
        """``dumps``, as UTF-8 bytes."""
        try:
            return orjson.dumps(obj, option=_ORJSON_LIKE_STDLIB)
        except TypeError:  # orjson.JSONEncodeError
            return json.dumps(obj, separators=(",", ":")).encode()

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        if not kwargs:
            try:
                return orjson.loads(text)
            except ValueError:  # orjson.JSONDecodeError
                pass
        try:
            return json.loads(text, **kwargs)
        except (ValueError, RecursionError):
            return [UNDECODABLE_EVENT]


def encode_plain(packet_type: int, namespace: str | None, ack_id: int | None, args: list[Any]) -> bytes | None:
    """A text Socket.IO packet as UTF-8 bytes, as ``Packet.encode`` writes it
    (type, ``namespace,`` unless the default one, ack id, JSON array), in one
    orjson call. ``None`` when ``args`` is not plain JSON for orjson (``bytes``
    that need binary attachments, integers beyond 64 bits, ...): the caller then
    takes python-socketio's general path."""
    try:
        body = orjson.dumps(args, option=_ORJSON_LIKE_STDLIB)
    except TypeError:  # orjson.JSONEncodeError
        return None
    head = str(packet_type)
    if namespace is not None and namespace != "/":
        head += namespace + ","
    if ack_id is not None:
        head += str(ack_id)
    return head.encode() + body


class StrictPacket(packet.Packet):
    """A Socket.IO packet decoded with ``SafeJSON``, whose binary attachments
    that do not fit become ``Undecodable``.

    Only Socket.IO's packets: passing ``json=`` to python-socketio would give
    Engine.IO's packets the same parser, and Engine.IO tells its ``2probe``
    upgrade probe from JSON by the parser raising, which SafeJSON never does
    (clients would then never leave long-polling)."""

    json = SafeJSON

    @classmethod
    def data_is_binary(cls, data: Any) -> bool:
        """Whether ``data`` holds ``bytes`` anywhere (the same answer as
        python-socketio's, without a call and a list per value)."""
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, (bytes, bytearray)):
                return True
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return False

    @classmethod
    def reconstruct_binary(cls, data: Any, attachments: list[bytes]) -> Any:
        try:
            return super().reconstruct_binary(data, attachments)
        except (IndexError, KeyError, TypeError, RecursionError):
            if isinstance(data, list) and data and isinstance(data[0], str):
                return [data[0], Undecodable()]
            return [UNDECODABLE_EVENT]
