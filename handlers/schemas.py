"""One marshmallow schema per inbound event, made strict where marshmallow is loose.

marshmallow's defaults accept ``"5"`` and ``True`` as integers, ``"yes"`` as a
boolean and lone surrogates in strings; the protocol accepts none of them, so
the fields below check JSON types exactly before anything else.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import emoji as emoji_data
from marshmallow import RAISE, Schema, ValidationError, fields, missing, pre_load

from storage import conversation, search_words
from storage.base import ID_RE

MAX_SAFE_INTEGER = 2**53 - 1
MAX_CONTENT = 4000
MAX_CLIENT_MSG_ID = 64
MAX_MENTIONS = 50
MAX_ATTACHMENTS = 10  # files per message
MAX_TOKEN = 8192  # characters of a JWT in refresh_token (the handshake's auth is bounded by the packet limit)
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_EMOJI_LENGTH = 32  # code points; the longest RGI sequences have about ten
_INT_RE = re.compile(r"-?[0-9]{1,20}")


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("Not a valid string.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Not valid Unicode (lone surrogate).") from None
    return value


class StrictString(fields.Field):
    """A JSON string of valid Unicode."""

    def _deserialize(self, value, attr, data, **kwargs):
        return _check_text(value)


class ObjectIdString(fields.Field):
    """A 24-hex id in either case, normalised to lowercase."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not ID_RE.fullmatch(value):
            raise ValidationError("Must be a 24-character hexadecimal id.")
        return value.lower()


class StrictInteger(fields.Field):
    """A JSON integer (not a boolean, not a float, not a string) within bounds."""

    def __init__(self, *, minimum: int, maximum: int = MAX_SAFE_INTEGER, **kwargs):
        super().__init__(**kwargs)
        self.minimum, self.maximum = minimum, maximum

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Must be an integer.")
        if not self.minimum <= value <= self.maximum:
            raise ValidationError(f"Must be between {self.minimum} and {self.maximum}.")
        return value


class StrictBoolean(fields.Field):
    """A JSON boolean only."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Must be a boolean.")
        return value


class Content(fields.Field):
    """Message text: not blank (unless ``allow_blank``: the schema decides), at most
    ``MAX_CONTENT`` code points."""

    def __init__(self, *, allow_blank: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.allow_blank = allow_blank

    def _deserialize(self, value, attr, data, **kwargs):
        value = _check_text(value)
        if not value.strip() and not self.allow_blank:
            raise ValidationError("Must not be empty.")
        if len(value) > MAX_CONTENT:
            raise ValidationError(f"Must be at most {MAX_CONTENT} characters.")
        return value


class ClientMsgId(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        value = _check_text(value)
        if not 1 <= len(value) <= MAX_CLIENT_MSG_ID or not value.isprintable():
            raise ValidationError(f"Must be 1 to {MAX_CLIENT_MSG_ID} printable characters.")
        return value


class DistinctIds(fields.Field):
    """At most ``most`` distinct ids (24-hex, either case), normalised to lowercase."""

    def __init__(self, most: int, what: str, **kwargs):
        super().__init__(**kwargs)
        self.most, self.what = most, what

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError(f"Must be a list of {self.what}s.")
        if len(value) > self.most:
            raise ValidationError(f"At most {self.most} {self.what}s, not {len(value)}.")
        bad = [i for i, v in enumerate(value) if not isinstance(v, str) or not ID_RE.fullmatch(v)]
        if bad:
            raise ValidationError(f"Items {bad} are not 24-character hexadecimal ids.")
        ids = [v.lower() for v in value]
        repeated = [i for i, count in Counter(ids).items() if count > 1]
        if repeated:
            raise ValidationError(f"Each {self.what} may be given once; repeated: {', '.join(repeated)}.")
        return ids


class Mentions(DistinctIds):
    """At most ``MAX_MENTIONS`` distinct user ids."""

    def __init__(self, **kwargs):
        super().__init__(MAX_MENTIONS, "user id", **kwargs)


class AttachmentIds(DistinctIds):
    """At most ``MAX_ATTACHMENTS`` distinct attachment ids."""

    def __init__(self, **kwargs):
        super().__init__(MAX_ATTACHMENTS, "attachment id", **kwargs)


class Choice(fields.Field):
    """One of a few strings."""

    def __init__(self, choices: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        self.choices = choices

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or value not in self.choices:
            raise ValidationError(f"Must be one of: {', '.join(self.choices)}.")
        return value


class Emoji(fields.Field):
    """One fully-qualified emoji of Unicode's emoji data (RGI: skin tones and ZWJ
    sequences included), as the ``emoji`` package ships it; no text, no spaces."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = _check_text(value)
        known = emoji_data.EMOJI_DATA.get(value) if len(value) <= MAX_EMOJI_LENGTH else None
        if known is None or known.get("status") != emoji_data.STATUS["fully_qualified"]:
            raise ValidationError("Must be one emoji (fully qualified, as emoji keyboards send it).")
        return value


class SearchQuery(fields.Field):
    """Search text: 1 to ``MAX_QUERY_LENGTH`` code points holding 1 to
    ``MAX_QUERY_WORDS`` words (``storage.search_words``); loaded as the parsed query."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = _check_text(value)
        if not 1 <= len(value) <= search_words.MAX_QUERY_LENGTH:
            raise ValidationError(f"Must be 1 to {search_words.MAX_QUERY_LENGTH} characters.")
        try:
            return search_words.parse_query(value)
        except search_words.QueryError as exc:
            raise ValidationError(str(exc)) from None


class Token(fields.Field):
    """A JWT as text: 1 to ``MAX_TOKEN`` characters (verified by the handler, not here)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = _check_text(value)
        if not 1 <= len(value) <= MAX_TOKEN:
            raise ValidationError(f"Must be 1 to {MAX_TOKEN} characters.")
        return value


class EventSchema(Schema):
    """Base: unknown fields are refused; ``null`` for an optional field means absent.

    Every event may carry the ``sender_id`` older clients sent; the error
    boundary refuses it (``forbidden``) unless it is the caller's own id.
    """

    class Meta:
        unknown = RAISE

    sender_id = ObjectIdString()

    @pre_load
    def _drop_nulls(self, data, **kwargs):
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in self.fields and not self.fields[k].required)
            }
        return data


class ListGroups(EventSchema):
    pass


class GroupRef(EventSchema):
    group_id = ObjectIdString(required=True)


class JoinGroup(GroupRef):
    since_seq = StrictInteger(minimum=0)
    since_rev = StrictInteger(minimum=0)
    limit = StrictInteger(minimum=1, maximum=MAX_LIMIT, load_default=DEFAULT_LIMIT)


class LeaveGroup(GroupRef):
    pass


class SendMessage(GroupRef):
    content = Content(required=True, allow_blank=True)
    client_msg_id = ClientMsgId()
    mentions = Mentions()
    reply_to = ObjectIdString()
    kind = Choice((conversation.PLAIN, conversation.QUESTION))
    attachments = AttachmentIds()  # then ``content`` may be blank (``_AFTER_LOAD``)


class GetHistory(GroupRef):
    before_seq = StrictInteger(minimum=1)
    after_seq = StrictInteger(minimum=0)
    limit = StrictInteger(minimum=1, maximum=MAX_LIMIT, load_default=DEFAULT_LIMIT)
    filter = Choice(conversation.FILTERS)


class React(GroupRef):
    message_id = ObjectIdString(required=True)
    emoji = Emoji(required=True)
    on = StrictBoolean(required=True)


class PinMessage(GroupRef):
    message_id = ObjectIdString(required=True)
    pinned = StrictBoolean(required=True)


class AcceptAnswer(GroupRef):
    question_id = ObjectIdString(required=True)
    answer_id = ObjectIdString(required=True, allow_none=True)  # null takes the acceptance back


class GetChanges(GroupRef):
    after_rev = StrictInteger(minimum=0, required=True)
    limit = StrictInteger(minimum=1, maximum=MAX_LIMIT, load_default=DEFAULT_LIMIT)


class Typing(GroupRef):
    is_typing = StrictBoolean(required=True)


class MarkRead(GroupRef):
    seq = StrictInteger(minimum=0, required=True)


class EditMessage(GroupRef):
    message_id = ObjectIdString(required=True)
    content = Content(required=True)


class DeleteMessage(GroupRef):
    message_id = ObjectIdString(required=True)


class SearchMessages(EventSchema):
    query = SearchQuery(required=True)
    group_id = ObjectIdString()
    before_seq = StrictInteger(minimum=1)
    limit = StrictInteger(minimum=1, maximum=MAX_LIMIT, load_default=DEFAULT_LIMIT)


class RefreshToken(EventSchema):
    token = Token(required=True)


SCHEMAS: dict[str, Schema] = {
    "list_groups": ListGroups(),
    "join_group": JoinGroup(),
    "leave_group": LeaveGroup(),
    "send_message": SendMessage(),
    "get_history": GetHistory(),
    "get_changes": GetChanges(),
    "typing": Typing(),
    "mark_read": MarkRead(),
    "edit_message": EditMessage(),
    "delete_message": DeleteMessage(),
    "refresh_token": RefreshToken(),
    "react": React(),
    "pin_message": PinMessage(),
    "accept_answer": AcceptAnswer(),
    "search_messages": SearchMessages(),
}


def _plain_loader(schema: Schema):
    """What ``schema.load`` does for a payload it accepts, as one loop over the
    fields (each field's own ``_deserialize``, see ``_converter``, so every rule stays in the field
    classes above), without marshmallow's general machinery. Only for event
    schemas (whose one hook is ``EventSchema._drop_nulls``: they declare none of
    their own, which ``tests/test_validation.py`` holds) whose fields load under
    their own names; ``None`` for any other schema."""
    if not isinstance(schema, EventSchema):
        return None
    spec = []
    for name, field in schema.load_fields.items():
        if field.data_key not in (None, name) or field.attribute not in (None, name):
            return None
        spec.append((name, field, _converter(field), field.required, field.load_default))
    names = frozenset(schema.load_fields)

    def load_plain(payload: dict[str, Any]) -> dict[str, Any] | None:
        """The loaded payload, or ``None`` when anything in it is refused
        (then marshmallow runs and reports every error)."""
        if not payload.keys() <= names:
            return None
        out: dict[str, Any] = {}
        try:
            for name, field, convert, required, default in spec:
                value = payload.get(name)
                if value is None:
                    if field.allow_none and required and name in payload:
                        # null for a required nullable field (accept_answer's answer_id) is a value
                        out[name] = None
                        continue
                    # absent, or null for an optional field
                    if required:
                        return None
                    if default is not missing:
                        out[name] = default() if callable(default) else default
                    continue
                out[name] = convert(value, name, payload)
        except ValidationError:
            return None
        return out

    return load_plain


def _converter(field: fields.Field) -> Any:
    """What turns a present, non-null value of ``field`` into the loaded one: the field's
    own ``_deserialize`` when that is all ``Field.deserialize`` would run (a field class of
    this module, with no validator and no pre- or post-load function), else ``deserialize``.
    About a fifth of the plain loader's time went to ``deserialize``'s general steps."""
    kind = type(field)
    if (kind.__module__ == __name__ and kind.deserialize is fields.Field.deserialize and not field.validators
            and not getattr(field, "pre_load", None) and not getattr(field, "post_load", None)):
        return field._deserialize
    return field.deserialize


_PLAIN = {event: loader for event, schema in SCHEMAS.items() if (loader := _plain_loader(schema))}


def _plain_load(event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    loader = _PLAIN.get(event)
    return loader(payload) if loader is not None else None


# Events whose payload may be left out entirely.
OPTIONAL_PAYLOAD = {"list_groups"}


def load(event: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """Validate an event's arguments; raise ``ValidationError`` with field -> messages."""
    if not args:
        if event in OPTIONAL_PAYLOAD:
            return {}
        raise ValidationError({"_payload": ["A payload object is required."]})
    if len(args) > 1:
        raise ValidationError({"_payload": ["Send exactly one payload object."]})
    payload = args[0]
    if payload is None and event in OPTIONAL_PAYLOAD:
        return {}
    if not isinstance(payload, dict):
        raise ValidationError({"_payload": ["The payload must be an object."]})
    data = _plain_load(event, payload)
    if data is None:
        data = SCHEMAS[event].load(payload)
    for one, other in _EXCLUSIVE.get(event, ()):
        if one in data and other in data:
            text = f"Give at most one of {one} and {other}."
            raise ValidationError({one: [text], other: [text]})
    if event in _AFTER_LOAD:
        _AFTER_LOAD[event](data)
    return data


def _text_or_files(data: dict[str, Any]) -> None:
    """A message has text, or files, or both."""
    if not data["content"].strip() and not data.get("attachments"):
        raise ValidationError({"content": ["Must not be empty (it may be when the message has attachments)."]})


# Rules over several fields of a loaded payload (schemas declare no hooks of their own).
_AFTER_LOAD = {"send_message": _text_or_files}


# Fields of an event that cannot be given together.
_EXCLUSIVE = {
    "get_history": [("before_seq", "after_seq")],
    "join_group": [("since_seq", "since_rev")],
}


class SystemMessage(GroupRef):
    """``POST /study-groups/{group_id}/messages`` (a service's): the body, and the id from the path."""

    content = Content(required=True)
    client_msg_id = ClientMsgId()
    mentions = Mentions(load_default=list)


# The platform's calls carry no user, so no ``sender_id`` either.
_SYSTEM_MESSAGE = SystemMessage(exclude=("sender_id",))
_GROUP_REF = GroupRef(exclude=("sender_id",))


def system_message(group_id: str, body: Any) -> dict[str, Any]:
    """Validate a service's message: the JSON body must be an object; ``group_id`` is the path's."""
    if not isinstance(body, dict):
        raise ValidationError({"_payload": ["The body must be a JSON object."]})
    if "group_id" in body:
        raise ValidationError({"group_id": ["Unknown field (the group is the path's)."]})
    return _SYSTEM_MESSAGE.load({**body, "group_id": group_id})


def group_ref(group_id: str) -> str:
    """A group id from a path, lowercase."""
    return str(_GROUP_REF.load({"group_id": group_id})["group_id"])


def history_query(group_id: str, query: Mapping[str, str]) -> dict[str, Any]:
    """Validate the HTTP history route (path id and query strings: ``limit``,
    ``before_seq``, ``after_seq``, ``filter``) by ``get_history``'s rules.

    Unknown parameters are ignored; an empty or non-integer value is an error.
    """
    data: dict[str, Any] = {"group_id": group_id}
    errors: dict[str, list[str]] = {}
    for name in ("limit", "before_seq", "after_seq"):
        if name not in query:
            continue
        raw = query[name]
        if not _INT_RE.fullmatch(raw):
            errors[name] = ["Must be an integer."]
        else:
            data[name] = int(raw)
    if "filter" in query:
        data["filter"] = query["filter"]
    try:
        loaded = load("get_history", (data,))
    except ValidationError as exc:
        errors = {**exc.normalized_messages(), **errors}
    if errors:
        raise ValidationError(errors)
    return loaded


def search_query(query: Mapping[str, str]) -> dict[str, Any]:
    """Validate ``GET /search`` (query strings ``q``, ``group_id``, ``limit``,
    ``before_seq``) by ``search_messages``' rules; errors name the parameters."""
    data: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name in ("limit", "before_seq"):
        if name in query:
            if _INT_RE.fullmatch(query[name]):
                data[name] = int(query[name])
            else:
                errors[name] = ["Must be an integer."]
    if "q" in query:
        data["query"] = query["q"]
    if "group_id" in query:
        data["group_id"] = query["group_id"]
    try:
        loaded = load("search_messages", (data,))
    except ValidationError as exc:
        found = exc.normalized_messages()
        if isinstance(found, dict) and "query" in found:
            found["q"] = found.pop("query")
        errors = {**found, **errors}
    if errors:
        raise ValidationError(errors)
    return loaded
