"""How Socket.IO packets are decoded: input Python cannot parse still gets an answer.

python-socketio drops an event whose JSON its parser rejects (nesting deeper than
the recursion limit, integers over 4,300 digits). That is valid enough on the
wire for a client to wait for an ack, so it is decoded here into an event that
the error boundary answers with ``invalid_payload``.

Binary packets (``BINARY_EVENT``, ``BINARY_ACK``) are never decoded: no event
of the protocol carries binary data, and python-socketio would buffer as many
attachments as a packet announces. ``binary_header`` reads just enough of one
(attachment count, namespace, ack id) to refuse it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson
from socketio import packet

# Event name that stands for a packet whose payload could not be decoded.
UNDECODABLE_EVENT = "\x00undecodable"
# What the standard module refuses to encode, orjson refuses too (instead of
# writing its own forms for dates and dataclasses).
_ORJSON_LIKE_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


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


class BinaryHeader(NamedTuple):
    """What precedes the JSON of a binary packet: ``5<attachments>-[/ns,][ack id]``."""

    attachments: int
    namespace: str
    ack_id: int | None


_MAX_DIGITS = 18  # of an attachment count or ack id (Node's are JavaScript numbers)


def binary_header(data: str) -> BinaryHeader | None:
    """The header of a ``BINARY_EVENT``/``BINARY_ACK`` packet (``data`` starts
    with ``5`` or ``6``), or ``None`` when it is not well formed."""
    dash = data.find("-", 1, 2 + _MAX_DIGITS)
    count = data[1:dash]
    if dash < 0 or not count.isdigit() or not count.isascii():
        return None
    i, end = dash + 1, len(data)
    namespace = "/"
    if i < end and data[i] == "/":
        comma = data.find(",", i)
        namespace = data[i:] if comma < 0 else data[i:comma]
        i = end if comma < 0 else comma + 1
    start = i
    while i < end and "0" <= data[i] <= "9":
        i += 1
    if i - start > _MAX_DIGITS:
        return None
    return BinaryHeader(int(count), namespace, int(data[start:i]) if i > start else None)


class StrictPacket(packet.Packet):
    """A Socket.IO packet decoded with ``SafeJSON``.

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
