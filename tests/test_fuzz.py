"""Fuzzing every client event and both history routes against one real server per test.

How hypothesis meets the async server: each test starts one server and its
clients through the usual async fixtures, then runs a ``@given(st.data())``
function in a worker thread (``asyncio.to_thread``). Hypothesis draws each
input in that thread (draws may depend on what the run has stored so far, such
as message ids) and hands the exchange to the test's event loop with
``asyncio.run_coroutine_threadsafe``. ``@given`` never touches an async fixture
and pytest-asyncio's loop keeps serving the server while hypothesis runs.
Settings are derandomized with no example database, so every run replays the
same inputs, and ``max_examples`` bounds the time.

Checks do not raise inside hypothesis: each broken property is recorded with
its exact input, and the test fails at the end listing, for each kind of
failure, the shortest input that showed it. The server is stateful and a lost
ack costs a timeout, so letting the shrinker replay failures would be slow and
would muddle the state; the shortest recorded input is the reproducer, and each
failure found this way also has a small explicit test at the end of the module.

For every input: the ack is the documented envelope, never ``internal``, and
exactly the answer the protocol fixes wherever it fixes one (``predict``: the
refusal order, and for a success the message it must carry, down to reactions,
pins, accepted answers, reply quotes and the next ``rev``; a call that changes
nothing answers the message as it was); the fuzzing connection stays up and
keeps answering; a control client keeps being served. Counts (unread, mentions,
open questions) and filtered histories are checked against the same model. At
the end of each run: every observer (Ben in Maths, Carol in Physics) saw each
stored message of its group exactly once, in ``seq`` order, and every ``rev`` of
its group once, in order; each acknowledged change (edit, deletion, reaction,
pin, accepted answer) reached it exactly as acknowledged; the stored history
equals exactly the acknowledged sends and changes, plus what no-ack events were
allowed to do (reconciled through the observers). HTTP answers are JSON
envelopes with documented status codes (``/study-groups//messages``, with no id
at all, is not the route: aiohttp's plain 404 is accepted there and only there).

Not generated here, and why: objects shaped like Socket.IO binary placeholders
(``{"_placeholder": true, "num": N}``) and JSON the server's parser cannot take
(nesting past ~930 levels, integers past 4,300 digits; the python client cannot
even encode them). Each wedges or silences the connection, so they have explicit
tests below instead of drowning every later input in timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import hypothesis
import pytest
import socketio
import yarl
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st

from cluster.rate_limits import Bucket, RateLimits
from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    EVE,
    GROUPS,
    MATHS,
    MESSAGE_FIELDS,
    NOWHERE,
    PHYSICS,
    ChatClient,
    make_settings,
    make_token,
)
from tests.support.raw import RawSocket

MAX_SAFE = 2**53 - 1
CODES = {
    "invalid_payload", "unauthorized", "forbidden", "not_member", "group_not_found",
    "message_not_found", "rate_limited", "storage_unavailable", "internal",
}
SERVER_EVENTS = {"message", "message_updated", "message_deleted", "typing", "presence"}
GROUP_NAMES = {MATHS: "Maths", PHYSICS: "Physics"}
FRAME_BUDGET = 60_000  # characters of JSON per frame; Engine.IO may close the connection at 64 KB
QUICK = 3.0  # seconds before an unanswered call is put aside (it is judged again at the end)
LATE = 10.0  # seconds before an unanswered call counts as never answered
SECRET_WORD = "xylophone-secret"

# event -> field -> (kind of value, required); the protocol's field rules. Every
# event also takes the ``sender_id`` older clients sent (``SENDER_ID``).
# Adding an event: its fields here, its deep refusals in ``DEEP`` (when it has
# any beyond the group's), a builder in ``VALID_PAYLOADS``, and its success
# check in ``Rig.SUCCESS`` (with its ack's keys in ``ACK_KEYS``).
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "list_groups": {},
    "join_group": {"group_id": ("id", True), "since_seq": ("seq", False), "limit": ("limit", False)},
    "leave_group": {"group_id": ("id", True)},
    "send_message": {
        "group_id": ("id", True), "content": ("content", True),
        "client_msg_id": ("client_msg_id", False), "sender_id": ("id", False),
        "mentions": ("mentions", False), "reply_to": ("id", False), "kind": ("kind", False),
    },
    "get_history": {
        "group_id": ("id", True), "before_seq": ("before_seq", False),
        "after_seq": ("seq", False), "limit": ("limit", False), "filter": ("filter", False),
    },
    "typing": {"group_id": ("id", True), "is_typing": ("bool", True)},
    "mark_read": {"group_id": ("id", True), "seq": ("seq", True)},
    "edit_message": {"group_id": ("id", True), "message_id": ("id", True), "content": ("content", True)},
    "delete_message": {"group_id": ("id", True), "message_id": ("id", True)},
    "react": {"group_id": ("id", True), "message_id": ("id", True), "emoji": ("emoji", True), "on": ("bool", True)},
    "pin_message": {"group_id": ("id", True), "message_id": ("id", True), "pinned": ("bool", True)},
    "accept_answer": {"group_id": ("id", True), "question_id": ("id", True), "answer_id": ("id or null", True)},
    "search_messages": {"query": ("query", True), "group_id": ("id", False), "limit": ("limit", False),
                        "before_seq": ("before_seq", False)},
}
EVENTS = list(FIELDS)
ALL_FIELD_NAMES = sorted({name for spec in FIELDS.values() for name in spec})
SENDER_ID = ("id", False)
NULLABLE = {"id or null"}  # kinds of required fields for which null is a value
KINDS = ("message", "question")
FILTERS = ("questions", "unanswered", "pinned", "mentions")
MEMBERS = {group: set(members) for group, _, members in GROUPS}
# Events that answer {ok, message} about a change of one message, and what each broadcasts.
CHANGES = {
    "edit_message": "message_updated", "delete_message": "message_deleted", "react": "message_updated",
    "pin_message": "message_updated", "accept_answer": "message_updated",
}
MAX_EMOJI_PER_MESSAGE, MAX_PINNED_PER_GROUP, EXCERPT = 20, 50, 140
# One emoji each (RGI: a skin tone, a ZWJ family, a flag, a keycap), and what is not one emoji.
VALID_EMOJI = ["\U0001F44D", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
               "\U0001F1EA\U0001F1F8", "#\ufe0f\u20e3"]
# Twenty more, to reach the limit of different emoji on one message.
MORE_EMOJI = ["\U0001F600", "\U0001F602", "\u2764\ufe0f", "\U0001F389", "\U0001F525", "\U0001F440", "\U0001F64F",
              "\u2705", "\U0001F4AF", "\U0001F914", "\U0001F622", "\U0001F62E", "\U0001F44F", "\U0001F680",
              "\u2b50", "\U0001F4A1", "\U0001F4DA", "\u270f\ufe0f", "\U0001F9EE", "\U0001F30D"]
INVALID_EMOJI = [
    "", " ", "\u3000", "\n", "ok", "+1", ":thumbsup:", "\U0001F44D ", " \U0001F44D", "\U0001F44D\n",
    "\U0001F44D\U0001F44D", "\U0001F44D\U0001F1EA\U0001F1F8", "\U0001F1EA\U0001F1F8\U0001F1EA\U0001F1F8",
    "\U0001F3FB",  # a lone skin tone
    "\u2764", "\u263a", "#\u20e3", "#", "1",  # unqualified forms, keycap bases
    "\U0001F1EA", "\U0001F1E6\U0001F1E6",  # a lone regional indicator, a pair that is no flag
    "\u200d", "\ufe0f", "\U0001F44D\u200d", "\u200d\U0001F44D", "\U0001F44Da",
    "\ud83d", "\udc4d", "\U0001F44D\ud800",  # lone surrogates
    "\U0001F44D" * 40, "\U0001F468\u200d\U0001F469\u200d\U0001F467" * 2000, "x" * 30_000,
]


@pytest.fixture
def settings():
    """No rate limits: one user sends thousands of events in a run."""
    return make_settings(rate_limits=RateLimits(send=Bucket(0, 0), other=Bucket(0, 0)))


# -- what the protocol says the answer must be --

HEX24 = re.compile(r"[0-9a-fA-F]{24}")
# Unicode's White_Space property; Python's str.isspace() also counts U+001C..U+001F.
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)
}
ONLY_PYTHON_SPACE = set("\x1c\x1d\x1e\x1f")


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _int_between(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def verdict(kind: str, value: Any) -> bool | None:
    """Is ``value`` valid for a field of ``kind``? ``None`` where the protocol's words leave it open."""
    if kind in ("id", "id or null"):
        return isinstance(value, str) and HEX24.fullmatch(value) is not None
    if kind == "seq":
        return _int_between(value, 0, MAX_SAFE)
    if kind == "before_seq":
        return _int_between(value, 1, MAX_SAFE)
    if kind == "limit":
        return _int_between(value, 1, 100)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "mentions":
        return (isinstance(value, list) and len(value) <= 50 and all(verdict("id", v) for v in value)
                and len({v.lower() for v in value}) == len(value))
    if kind in ("kind", "filter"):
        return value in (KINDS if kind == "kind" else FILTERS) and isinstance(value, str)
    if not isinstance(value, str) or _has_surrogate(value):
        return False
    if kind == "emoji":
        return _emoji_verdict(value)
    if kind == "query":
        return _query_verdict(value)
    if kind == "content":
        if len(value) > 4000 or all(c in WHITE_SPACE for c in value):
            return False
        if any(c not in WHITE_SPACE and c not in ONLY_PYTHON_SPACE for c in value):
            return True
        return None
    # client_msg_id: 1..64 printable characters
    if not 1 <= len(value) <= 64 or any(unicodedata.category(c) == "Cc" for c in value):
        return False
    return True if all("!" <= c <= "~" or c.isalnum() for c in value) else None


def _query_verdict(value: str) -> bool | None:
    """1 to 200 code points holding 1 to 10 words. Decided where the words are plain:
    ASCII letters and digits between spaces (or no letter or digit at all)."""
    if not 1 <= len(value) <= 200:
        return False
    if value.isascii() and not any(c.isalnum() for c in value):
        return False
    if all(c.isascii() and (c.isalnum() or c == " ") for c in value):
        return 1 <= len(value.split()) <= 10
    return None


def plain_words(text: str) -> list[str]:
    """A query of plain words (see ``_query_verdict``) as the protocol compares them."""
    return text.lower().split()


def folded(text: str) -> str:
    """Case and accents gone, as the protocol compares words."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def _emoji_verdict(value: str) -> bool | None:
    """One RGI emoji: the listed ones are; no text, white space, control character
    or anything longer than the longest RGI sequence (10 code points) is. Of
    Unicode's letters only U+2139 (information source) is an emoji."""
    if value in VALID_EMOJI or value in MORE_EMOJI:
        return True
    if value in INVALID_EMOJI or not 1 <= len(value) <= 10 or value.isascii():
        return False
    for c in value:
        category = unicodedata.category(c)
        if c in WHITE_SPACE or category in ("Cc", "Co", "Zs", "Zl", "Zp") or category[0] == "L" and c != "\u2139":
            return False
    return None


class _Anything:
    """Equal to any value: stands for what the server chooses (a new id, a time)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __repr__(self) -> str:
        return "<any>"


ANY: Any = _Anything()


@dataclass
class Expect:
    code: str | None  # "ok", an error code, or None where the protocol leaves the answer open
    fields: set[str] = field(default_factory=set)  # what invalid_payload's details must name
    effect: str | None = None  # store, duplicate (sends); change, noop (changes of one message)
    message_id: str | None = None
    after: dict[str, Any] | None = None  # the message the ack must carry (``ANY`` where the server chooses)


def as_server_reads(value: Any) -> Any:
    """``value`` as the server decodes it: the client escapes every surrogate and
    JSON joins an escaped pair into one character."""
    return json.loads(json.dumps(value))


def predict(event: str, args: tuple[Any, ...], rig: Rig) -> Expect:
    """The answer Ana (a member of Maths and Physics) must get, from the protocol's rules alone."""
    if event not in FIELDS or contains_bytes(list(args)):  # binary packets are refused whole
        return Expect("invalid_payload")
    if not args:
        return Expect("ok") if event == "list_groups" else Expect("invalid_payload")
    if len(args) > 1:
        return Expect("invalid_payload")
    payload = as_server_reads(args[0])
    if payload is None and event == "list_groups":
        return Expect("ok")
    if not isinstance(payload, dict):
        return Expect("invalid_payload")
    spec = {"sender_id": SENDER_ID, **FIELDS[event]}
    bad: set[str] = set()
    unsure = False
    for key, value in payload.items():
        if key not in spec:
            bad.add(key)
        elif value is None:
            if spec[key][1] and spec[key][0] not in NULLABLE:
                bad.add(key)
        else:
            ok = verdict(spec[key][0], value)
            bad |= {key} if ok is False else set()
            unsure |= ok is None
    bad |= {key for key, (_, required) in spec.items() if required and key not in payload}
    data = {k: v for k, v in payload.items() if v is not None}
    if not bad and event == "get_history" and "before_seq" in data and "after_seq" in data:
        bad = {"before_seq", "after_seq"}
    if bad:
        return Expect("invalid_payload", bad)
    if unsure:
        return Expect(None)
    if data.get("sender_id", ANA).lower() != ANA:
        return Expect("forbidden")
    if event == "list_groups" or event == "search_messages" and "group_id" not in data:
        return Expect("ok")
    group = data["group_id"].lower()
    if group not in GROUP_NAMES:
        return Expect("group_not_found")
    # Ana is a member of both groups: not_member never applies to her.
    deep = DEEP.get(event)
    if deep is None:
        return Expect("ok")
    if rig.dirty:  # a change is unanswered: what it did is unknown until the end
        return Expect(None)
    return deep(data, group, rig)


# - the refusals and effects that depend on what is stored, event by event -

def _next(message: dict[str, Any], rig: Rig, **changed: Any) -> dict[str, Any]:
    """``message`` after a change: the group's next ``rev``."""
    return {**message, **changed, "rev": rig._latest_rev(message["group_id"]) + 1}


def _quote(message: dict[str, Any]) -> dict[str, Any]:
    """What a reply keeps of the message it replies to (the protocol's ``reply_to``)."""
    return {"id": message["id"], "seq": message["seq"], "sender_id": message["sender_id"],
            "sender_name": message["sender_name"], "deleted": message["deleted"],
            "excerpt": "" if message["deleted"] else message["content"][:EXCERPT]}


def _predict_send(data: dict[str, Any], group: str, rig: Rig) -> Expect:
    mentions = [m.lower() for m in data.get("mentions", [])]
    if any(m not in MEMBERS[group] for m in mentions):
        return Expect("invalid_payload", {"mentions"})
    quoted = None
    if "reply_to" in data:
        replied = rig.message_in(group, data["reply_to"])  # a deleted one too
        if replied is None:
            return Expect("message_not_found")
        quoted = _quote(replied)
    first = rig.client_ids.get((group, data.get("client_msg_id")))
    if first:
        return Expect("ok", effect="duplicate", message_id=first, after=rig.messages[first])
    after = {
        "type": "message", "kind": data.get("kind", "message"), "id": ANY, "seq": rig._latest(group) + 1,
        "rev": rig._latest_rev(group) + 1, "group_id": group, "sender_id": ANA, "sender": "Ana Garc\u00eda",
        "sender_name": "Ana Garc\u00eda", "content": data["content"], "timestamp": ANY,
        "client_msg_id": data.get("client_msg_id"), "edited_at": None, "deleted": False, "mentions": mentions,
        "reply_to": quoted, "reactions": [], "pinned": None, "answer_id": None, "attachments": [],
        "deleted_by": None,
    }
    return Expect("ok", effect="store", after=after)


def _predict_own_change(data: dict[str, Any], group: str, rig: Rig) -> Expect:
    """``edit_message`` and ``delete_message``: the sender's own message."""
    message_id = data["message_id"].lower()
    message = rig.message_in(group, message_id)
    if message is None:
        return Expect("message_not_found")
    if message["sender_id"] != ANA:
        return Expect("forbidden")
    if "content" in data:  # an edit
        if message["deleted"]:
            return Expect("message_not_found")
        after = _next(message, rig, content=data["content"], edited_at=ANY)
        return Expect("ok", effect="change", message_id=message_id, after=after)
    if message["deleted"]:
        return Expect("ok", effect="noop", message_id=message_id, after=message)
    after = _next(message, rig, content="", deleted=True, mentions=[], reactions=[], pinned=None, attachments=[])
    return Expect("ok", effect="change", message_id=message_id, after=after)


def _reacted(reactions: list[dict[str, Any]], emoji: str, on: bool) -> list[dict[str, Any]] | str | None:
    """Ana's reaction added or taken back; ``None`` when that changes nothing,
    ``"too many"`` for one emoji too many. (Runs have fewer than 20 reactors.)"""
    for i, reaction in enumerate(reactions):
        if reaction["emoji"] != emoji:
            continue
        if on == (ANA in reaction["user_ids"]):
            return None
        users = [*reaction["user_ids"], ANA] if on else [u for u in reaction["user_ids"] if u != ANA]
        kept = [{"emoji": emoji, "count": len(users), "user_ids": users}] if users else []
        return [*reactions[:i], *kept, *reactions[i + 1:]]
    if not on:
        return None
    if len(reactions) >= MAX_EMOJI_PER_MESSAGE:
        return "too many"
    return [*reactions, {"emoji": emoji, "count": 1, "user_ids": [ANA]}]


def _predict_react(data: dict[str, Any], group: str, rig: Rig) -> Expect:
    message_id = data["message_id"].lower()
    message = rig.message_in(group, message_id, live=True)
    if message is None:
        return Expect("message_not_found")
    reactions = _reacted(message["reactions"], data["emoji"], data["on"])
    if reactions == "too many":
        return Expect("invalid_payload", {"emoji"})
    if reactions is None:
        return Expect("ok", effect="noop", message_id=message_id, after=message)
    return Expect("ok", effect="change", message_id=message_id, after=_next(message, rig, reactions=reactions))


def _predict_pin(data: dict[str, Any], group: str, rig: Rig) -> Expect:
    message_id = data["message_id"].lower()
    message = rig.message_in(group, message_id, live=True)
    if message is None:
        return Expect("message_not_found")
    if data["pinned"] == (message["pinned"] is not None):  # a pin keeps who pinned it first
        return Expect("ok", effect="noop", message_id=message_id, after=message)
    if data["pinned"] and sum(1 for m in rig._of(group) if m["pinned"]) >= MAX_PINNED_PER_GROUP:
        return Expect("invalid_payload", {"pinned"})
    pinned = {"by": ANA, "at": ANY} if data["pinned"] else None
    return Expect("ok", effect="change", message_id=message_id, after=_next(message, rig, pinned=pinned))


def _predict_accept(data: dict[str, Any], group: str, rig: Rig) -> Expect:
    """The order docs/protocol.md gives: question missing or deleted, not a question,
    answer missing or deleted (or another group's), answer not later, not the asker."""
    question_id = data["question_id"].lower()
    question = rig.message_in(group, question_id, live=True)
    if question is None:
        return Expect("message_not_found")
    if question["kind"] != "question":
        return Expect("invalid_payload", {"question_id"})
    answer_id = data["answer_id"].lower() if "answer_id" in data else None
    if answer_id is not None:
        answer = rig.message_in(group, answer_id, live=True)
        if answer is None:
            return Expect("message_not_found")
        if answer["seq"] <= question["seq"]:
            return Expect("invalid_payload", {"answer_id"})
    if question["sender_id"] != ANA:
        return Expect("forbidden")
    if question["answer_id"] == answer_id:
        return Expect("ok", effect="noop", message_id=question_id, after=question)
    return Expect("ok", effect="change", message_id=question_id, after=_next(question, rig, answer_id=answer_id))


DEEP: dict[str, Callable[[dict[str, Any], str, Rig], Expect]] = {
    "send_message": _predict_send,
    "edit_message": _predict_own_change,
    "delete_message": _predict_own_change,
    "react": _predict_react,
    "pin_message": _predict_pin,
    "accept_answer": _predict_accept,
}


def envelope_problems(ack: Any) -> list[str]:
    """What is wrong with the shape of an ack (empty when it is the documented envelope)."""
    if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
        return ["ack is not an object with a boolean ok"]
    if ack["ok"]:
        return []
    if set(ack) != {"ok", "error"} or not isinstance(ack["error"], dict):
        return ["failure ack is not {ok: false, error: {...}}"]
    error = ack["error"]
    problems = []
    if error.get("code") not in CODES:
        problems.append(f"undocumented error code {error.get('code')!r}")
    if error.get("code") == "internal":
        problems.append("answered internal")
    if not isinstance(error.get("message"), str) or not error["message"]:
        problems.append("error.message is not a non-empty string")
    if not set(error) <= {"code", "message", "details", "retry_after_ms"}:
        problems.append(f"unexpected error keys {sorted(set(error))}")
    details = error.get("details")
    if error.get("code") == "invalid_payload" and not (
        isinstance(details, dict)
        and all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in details.values())
    ):
        problems.append("invalid_payload details are not {field: [message, ...]}")
    return problems


# -- strategies --

SPECIAL = [
    "\ud800", "\udbff", "\udc00", "\udfff",  # lone surrogates
    "\u200e", "\u200f", "\u202e", "\u2066", "\u2067",  # direction marks and overrides
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",  # zero-width
    "\U0001F600", "\U0001F4DA", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\U0001F1EA\U0001F1F8",
    "\u0301", "\u0336", "e\u0301", "\u0e49\u0e49\u0e49",  # combining marks
    "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\u2029", "\xa0", "\u3000", "\t", "\n", " ",
    "\uffff", "\ufffe", "\U0010ffff", "\ufffd", "\u0663", "\uff15",
    "\\", '"', "'", "<b>", "${x}", "$gt", "%s", "{{x}}",
]
SAFE_SPECIAL = [s for s in SPECIAL if not _has_surrogate(s)]


def texts(max_size: int = 20, *, surrogates: bool = True) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.characters(), st.sampled_from(SPECIAL if surrogates else SAFE_SPECIAL))
    return st.lists(pieces, max_size=max_size).map("".join)


def _huge(piece: str, times: int) -> str:
    cost = max(len(json.dumps(c)) - 2 for c in piece)  # escaped length of the costliest code point
    return (piece * times)[: 40_000 // cost]


HUGE_TEXT = st.builds(_huge, texts(4).filter(bool), st.integers(500, 20_000))
EDGE_CONTENT = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "\U0001F4DA", "e\u0301", "\u200b", " ", "\u3000", "\u200f", "\ud800"]),
    st.sampled_from([1, 2, 3999, 4000, 4001]),
)
INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 50, 99, 100, 101, MAX_SAFE, MAX_SAFE + 1, 2**63, -(2**63), 10**30]),
)
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, 2.0, 1.5, 1e308, float("inf")]))
KEYS = st.one_of(
    texts(12),
    st.sampled_from(ALL_FIELD_NAMES + [
        "__proto__", "constructor", "$where", "$set", "_id", "id", "type", "seq ", "Group_id",
        "groupId", "", "group_id\u200b", "\uff47roup_id", "sender", "token",
    ]),
)
LEAVES = st.one_of(
    st.none(), st.booleans(), INTS, FLOATS, texts(),
    st.sampled_from([MATHS, PHYSICS, NOWHERE, ANA, BEN, MATHS.upper(), "", "true", "null"]),
)
BIG_LEAVES = st.one_of(LEAVES, HUGE_TEXT, EDGE_CONTENT)


def _nest(depth: int, leaf: Any, as_object: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_object else [leaf]
    return leaf


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tree = st.recursive(
        leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=4),
        max_leaves=10,
    )
    # The python client itself cannot encode much past 450 levels (its binary check recurses).
    deep = st.builds(_nest, st.integers(10, 300), leaves, st.booleans())
    return st.one_of(tree, tree, tree, deep)


VALUES = json_values(BIG_LEAVES)
BINARY = st.one_of(st.binary(max_size=40), st.binary(min_size=1, max_size=30_000), st.binary(max_size=8).map(bytearray))
BINARY_VALUES = json_values(st.one_of(BIG_LEAVES, BINARY, BINARY))
FULLWIDTH = str.maketrans("0123456789abcdef", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19\uff41\uff42\uff43\uff44\uff45\uff46")
HEX = "0123456789abcdefABCDEF"


# Draws must not change shape with the server's state (hypothesis checks that the
# same choices always lead to the same draws), so choices among things that
# exist only at run time draw a plain index and resolve it on the spot.
PICK = st.integers(0, 2**20)


def pick(draw: Callable[..., Any], options: list[Any]) -> Any:
    return options[draw(PICK) % len(options)]


def known(options: Callable[[], list[Any]], fallback: Any) -> st.SearchStrategy[Any]:
    """One of ``options()`` as they are when drawn."""
    return PICK.map(lambda i: (options() or [fallback])[i % len(options() or [fallback])])


def ids(existing: Callable[[], list[str]] = list) -> st.SearchStrategy[Any]:
    """Ids of every shape: real ones in any case, random, near misses, wrong types."""
    real = st.one_of(st.sampled_from([MATHS, PHYSICS, NOWHERE, ANA, BEN, DAN, EVE]), known(existing, NOWHERE))
    return st.one_of(
        real, real, real, real, real, real, real.map(str.upper),
        st.builds(lambda s, mask: "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(s)),
                  real, st.integers(0, 2**24 - 1)),
        st.text(HEX, min_size=24, max_size=24),
        st.text(HEX, max_size=30).filter(lambda s: len(s) != 24),
        st.builds(lambda s, i, c: s[:i] + c + s[i + 1:], real, st.integers(0, 23),
                  st.sampled_from(["g", "G", " ", "-", "\u0663", "\uff10", "\ud800", "\u200b", "\x00"])),
        st.builds(lambda s, i, c: s[:i] + c + s[i:], real, st.integers(0, 24),
                  st.sampled_from(["\u200b", "\u200f", "\ufeff", " ", "\n", "0"])),
        real.map(lambda s: s.translate(FULLWIDTH)),
        real.map(lambda s: f"ObjectId('{s}')"),
        real.map(lambda s: {"$oid": s}),
        real.map(lambda s: [s]),
        real.map(lambda s: int(s, 16)),
        st.sampled_from(["", None, True, 0, 24, "null", "0" * 24, "f" * 24, "F" * 24]),
    )


def value_for(kind: str, rig: Rig) -> st.SearchStrategy[Any]:
    """Values aimed at one field: near its rules' edges, or anything at all."""
    if kind == "id":
        specific = ids(lambda: sorted(rig.messages))
    elif kind in ("seq", "before_seq", "limit"):
        specific = st.one_of(INTS, FLOATS, st.sampled_from([True, False, "5", "", "0x10", [5], {"n": 5}, None]))
    elif kind == "bool":
        specific = st.sampled_from([True, False, "true", "false", "yes", 1, 0, 1.0, None, [], {}, [True]])
    elif kind == "content":
        specific = st.one_of(texts(30), HUGE_TEXT, EDGE_CONTENT, st.sampled_from(
            ["", " ", "\u3000\u2028", "\u200b", "\x00", "\x1c", "\ud800", "a\ud800b", "\ufeff", "\u0301"]))
    elif kind in SPECIFIC:
        specific = SPECIFIC[kind]
    elif kind == "id or null":
        specific = st.one_of(st.none(), ids(lambda: sorted(rig.messages)))
    else:  # client_msg_id
        specific = st.one_of(
            texts(70),
            st.sampled_from(["", "c" * 64, "c" * 65, "x\x00", "x\ny", "\u200b", "\u00f1and\u00fa-\u2713",
                             "\ud800", " ", "seed-1"]),
            known(lambda: sorted(cid for _, cid in rig.client_ids), "seed-1"),
        )
    return st.one_of(specific, specific, VALUES)


MENTIONS = st.one_of(
    st.lists(st.sampled_from([ANA, BEN, CAROL, DAN, EVE, BEN.upper()]), max_size=4),
    st.lists(ids(), max_size=3),
    st.sampled_from([[], [ANA] * 2, [ANA, ANA.upper()], [BEN] * 51, [f"{i:024x}" for i in range(50)],
                     [f"{i:024x}" for i in range(51)], ANA, {"0": ANA}, [[ANA]], [None]]),
)
EMOJI = st.one_of(st.sampled_from(VALID_EMOJI), st.sampled_from(VALID_EMOJI), st.sampled_from(INVALID_EMOJI),
                  texts(3), st.sampled_from(SPECIAL), HUGE_TEXT)
# Values aimed at the conversation fields (kinds without a case in ``value_for``).
SPECIFIC: dict[str, st.SearchStrategy[Any]] = {
    "mentions": MENTIONS,
    "kind": st.sampled_from([*KINDS, "system", "Question", "question ", "", "questions", "message\x00"]),
    "filter": st.sampled_from([*FILTERS, "", "Pinned", "all", "mention", "question", "pinned\u200b", "unread"]),
    "emoji": EMOJI,
    "query": st.one_of(texts(30), HUGE_TEXT, st.sampled_from([
        "", " ", "a", "notes", "RESOLVIÓ deriv", "x" * 200, "x" * 201, " ".join(["w"] * 10), " ".join(["w"] * 11),
        "¿?", "...", "\ud800", "a\ud800", "\u24b6", "数学", "don't", "e\u0301", "\u200b"])),
}

ACK = st.sampled_from([True, True, True, False])
ODD_NAMES = [
    "connect", "disconnect", "*", "message", "connect_error", "", " ", "send_message ", "SEND_MESSAGE",
    "sendMessage", "__proto__", "join_group\u200b", "\ud800", "\U0001F600", "list_groups\x00",
]
EVENT_NAMES = st.one_of(*[st.sampled_from(EVENTS)] * 3, st.sampled_from(ODD_NAMES), texts(20))


def frame_size(event: str, args: tuple[Any, ...]) -> int:
    """Characters of the JSON text the python client sends (ensure_ascii; bytes travel apart)."""
    return len(json.dumps([event, *args], separators=(",", ":"), default=lambda _: {"_placeholder": 1}))


def contains_bytes(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, list):
        return any(contains_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(contains_bytes(v) for v in value.values())
    return False


def show(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit} chars)"


# -- running hypothesis next to the server --

HYPOTHESIS = hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
    print_blob=False,
)


async def explore(examples: int, step: Callable[[Callable[..., Any]], Coroutine[Any, Any, None]]) -> None:
    """Run ``step(draw)`` for ``examples`` inputs. ``step`` draws in hypothesis's thread
    and returns the coroutine that talks to the server, which runs on this loop."""
    loop = asyncio.get_running_loop()

    @hypothesis.settings(HYPOTHESIS, max_examples=examples)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        coroutine = step(data.draw)
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=4 * LATE)

    await asyncio.to_thread(run)


# -- the fuzzing rig: Ana fuzzes, Ben watches Maths, Carol watches Physics --

MESSAGE_ACK = {"ok", "message"}
ACK_KEYS = {
    "list_groups": {"ok", "groups"}, "leave_group": {"ok"}, "typing": {"ok"},
    "join_group": {"ok", "group", "messages", "has_more", "latest_seq", "latest_rev", "last_read_seq",
                   "unread_count", "mention_count", "open_questions", "online"},
    "get_history": {"ok", "messages", "has_more"},
    "mark_read": {"ok", "last_read_seq", "unread_count", "mention_count"},
    "send_message": {"ok", "message", "duplicate"},
    "search_messages": {"ok", "results", "has_more"},
    **dict.fromkeys(CHANGES, MESSAGE_ACK),
}
# Events whose success may show message content (any other ack must not).
SHOWS_MESSAGES = {"join_group", "get_history", "send_message", "search_messages", *CHANGES}

@dataclass
class Problem:
    what: str
    call: str
    detail: str = ""


class Rig:
    def __init__(self, connect: Callable[..., Any], ana: ChatClient, ben: ChatClient, carol: ChatClient) -> None:
        self.connect = connect
        self.ana, self.ben, self.carol = ana, ben, carol
        self.observer = {MATHS: ben, PHYSICS: carol}
        self.messages: dict[str, dict[str, Any]] = {}  # id -> current version, as last answered
        self.client_ids: dict[tuple[str, str], str] = {}  # (group, client_msg_id) -> Ana's message id
        self.sent: list[dict[str, Any]] = []  # acknowledged new messages, as acked
        self.changes: list[tuple[str, dict[str, Any]]] = []  # acknowledged edits and deletions
        self.unacked_sends: list[tuple[str, str]] = []  # (group, content) no-ack sends may have stored
        self.unacked_changes = 0  # no-ack edits and deletions that may have changed something
        self.read: dict[str, int | None] = {MATHS: 0, PHYSICS: 0}  # Ana's markers; None = unknown
        self.problems: list[Problem] = []
        self.pending: list[tuple[str, tuple[Any, ...], Expect, str, asyncio.Future]] = []
        self.dirty = False  # the model may lag the store (an unanswered or no-ack change)
        self.exchanges = 0
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (event, code) of every answered call
        self.effects: Counter[tuple[str, str]] = Counter()  # (event, "change" or "noop") of successes

    # - one exchange -

    async def exercise(self, event: str, args: tuple[Any, ...], *, ack: bool = True) -> None:
        self.exchanges += 1
        expect = predict(event, args, self)
        call = f"ana.{'call' if ack else 'emit'}({event!r}, *{show(args)})"
        if ack:
            task = asyncio.ensure_future(self.ana.sio.call(event, args, timeout=LATE))
            done, _ = await asyncio.wait({task}, timeout=QUICK)
            if done:
                self._judge(event, args, expect, call, task)
            else:
                self.pending.append((event, args, expect, call, task))
                self.dirty |= expect.code != "invalid_payload"
            await self._still_serving(call)
        else:
            await self.ana.sio.emit(event, args)
            if await self._still_serving(call):
                await self._follow_unacked(event, args, expect)
        await self._control_served(call)

    def _judge(self, event: str, args: tuple[Any, ...], expect: Expect, call: str, task: asyncio.Future) -> None:
        try:
            ack = task.result()
        except socketio.exceptions.TimeoutError:
            self.problem("never answered", call, f"expected {expect.code or 'an ack'}")
            return
        except Exception as exc:
            self.problem(f"call failed with {type(exc).__name__}", call, str(exc))
            return
        shape = envelope_problems(ack)
        for what in shape:
            self.problem(what, call, show(ack))
        if shape:
            return
        code = "ok" if ack["ok"] else ack["error"]["code"]
        self.outcomes[event if event in FIELDS else "<other event>", code] += 1
        if expect.code is not None and code != expect.code:
            self.problem(f"{event if event in FIELDS else '<other event>'}: expected {expect.code}, got {code}",
                         call, show(ack))
            return
        if code == "invalid_payload" and not expect.fields <= set(ack["error"]["details"]):
            self.problem("invalid_payload does not name the bad field", call,
                         f"expected {sorted(expect.fields)} in {show(ack)}")
        if SECRET_WORD in json.dumps(ack) and not (ack["ok"] and event in SHOWS_MESSAGES):
            self.problem("ack leaks message content", call, show(ack))
        if ack["ok"]:
            self._success(event, as_server_reads(args[0]) if args else None, expect, call, ack)

    def problem(self, what: str, call: str, detail: str = "") -> None:
        self.problems.append(Problem(what, call, detail))

    # - what success looks like, event by event -

    def _success(self, event: str, payload: Any, expect: Expect, call: str, ack: dict[str, Any]) -> None:
        if set(ack) != ACK_KEYS.get(event):
            self.problem(f"{event} ack has keys {sorted(ack)}", call, show(ack))
            return
        group = payload["group_id"].lower() if isinstance(payload, dict) and "group_id" in payload else None
        self.SUCCESS[event](self, event, call, payload, group, expect, ack)

    def _ok_list_groups(self, event: str, call: str, payload: Any, group: None, expect: Expect, ack: dict[str, Any]) -> None:
        expected = [self._summary(g) for g in (MATHS, PHYSICS)]
        got = ack["groups"]
        if [g.get("id") for g in got] != [MATHS, PHYSICS] or (
            not self.dirty and got != expected and None not in self.read.values()
        ):
            self.problem("list_groups answers wrong groups or counts", call, f"{show(got)} != {show(expected)}")

    def _ok_empty(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect, ack: dict[str, Any]) -> None:
        if ack != {"ok": True}:
            self.problem(f"{event} success is not {{ok: true}}", call, show(ack))

    def _ok_join_group(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect,
                       ack: dict[str, Any]) -> None:
        exact = not self.dirty
        if ack["group"] != {"id": group, "name": GROUP_NAMES[group]} or ANA not in ack["online"]:
            self.problem("join_group names the wrong group or leaves Ana offline", call, show(ack))
        since = payload.get("since_seq")
        page = self._page(group, payload.get("limit") or 50, after=since, before=None)
        self._check_page(call, ack, page, exact)
        if exact and (ack["latest_seq"], ack["latest_rev"]) != (self._latest(group), self._latest_rev(group)):
            self.problem("join_group latest_seq or latest_rev is wrong", call, show(ack))
        if exact and ack["open_questions"] != self._open_questions(group):
            self.problem("join_group open_questions is wrong", call, f"{show(ack)}, expected {self._open_questions(group)}")
        marker = self.read[group]
        if exact and marker is not None and (ack["last_read_seq"], ack["unread_count"], ack["mention_count"]) != (
            marker, self._unread(group, marker), self._mentioned(group, marker)
        ):
            self.problem("join_group read marker, unread or mention count is wrong", call, show(ack))

    def _ok_get_history(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect,
                        ack: dict[str, Any]) -> None:
        page = self._page(group, payload.get("limit") or 50, after=payload.get("after_seq"),
                          before=payload.get("before_seq"), only=payload.get("filter"))
        self._check_page(call, ack, page, not self.dirty)

    def _ok_mark_read(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect,
                      ack: dict[str, Any]) -> None:
        previous = self.read[group]
        if not self.dirty:
            target = min(payload["seq"], self._latest(group))
            expected = max(previous, target) if previous is not None else None
            if (expected is not None and ack["last_read_seq"] != expected) or ack["last_read_seq"] < target:
                self.problem("mark_read moved the marker wrongly", call, f"{show(ack)}, was {previous}")
            elif (ack["unread_count"], ack["mention_count"]) != (
                self._unread(group, ack["last_read_seq"]), self._mentioned(group, ack["last_read_seq"])
            ):
                self.problem("mark_read unread_count or mention_count is wrong", call, show(ack))
        elif previous is not None and ack["last_read_seq"] < previous:
            self.problem("mark_read moved the marker back", call, f"{show(ack)}, was {previous}")
        self.read[group] = ack["last_read_seq"]

    def _ok_send_message(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect,
                         ack: dict[str, Any]) -> None:
        message, duplicate = ack["message"], ack["duplicate"]
        if not isinstance(message, dict) or set(message) != MESSAGE_FIELDS:
            self.problem("sent message has the wrong fields", call, show(ack))
            return
        if (message["group_id"], message["sender_id"], message["sender"]) != (group, ANA, "Ana Garc\u00eda"):
            self.problem("sent message has the wrong group or sender", call, show(message))
        if expect.effect in ("store", "duplicate") and duplicate != (expect.effect == "duplicate"):
            self.problem(f"send answered duplicate={duplicate}, expected {expect.effect}", call, show(ack))
        if duplicate:
            if expect.message_id and message["id"] != expect.message_id:
                self.problem("duplicate send answered another message", call, show(message))
            elif not self.dirty and expect.after is not None and message != expect.after:
                self.problem("duplicate send answered another state of the first message", call,
                             f"{show(message)} != {show(expect.after)}")
            return
        if (message["content"], message["client_msg_id"], message["deleted"], message["edited_at"]) != (
            payload["content"], payload.get("client_msg_id"), False, None
        ):
            self.problem("sent message does not carry what was sent", call, show(message))
        elif not self.dirty and expect.after is not None and message != expect.after:
            self.problem("sent message differs from the one predicted", call,
                         f"{show(message)} != {show(expect.after)}")
        self._remember(message)
        self.sent.append(message)

    def _ok_change(self, event: str, call: str, payload: dict[str, Any], group: str, expect: Expect, ack: dict[str, Any]) -> None:
        """Every event that changes one message and answers it (``CHANGES``)."""
        message = ack["message"]
        if not isinstance(message, dict) or set(message) != MESSAGE_FIELDS:
            self.problem(f"{event} answered a message with the wrong fields", call, show(message))
            return
        target = payload.get("question_id") or payload.get("message_id")
        before = self.messages.get(message["id"])
        if before is None or message["seq"] != before["seq"] or message["id"] != target.lower():
            self.problem(f"{event} answered the wrong message", call, show(message))
            return
        if event == "edit_message":
            good = message["content"] == payload["content"] and isinstance(message["edited_at"], str)
        elif event == "delete_message":
            good = message["deleted"] is True and message["content"] == ""
        else:
            good = not message["deleted"]
        if not good:
            self.problem(f"{event} answered the wrong message", call, show(message))
            return
        if not self.dirty and expect.after is not None and message != expect.after:
            what = "changed nothing" if expect.effect == "noop" else "changed it"
            self.problem(f"{event} {what} but answered another state", call,
                         f"{show(message)} != {show(expect.after)}")
        self.effects[event, "change" if message["rev"] > before["rev"] else "noop"] += 1
        if message["rev"] > before["rev"]:
            self.changes.append((CHANGES[event], message))
        elif message != before:
            self.problem(f"{event} answered a new state at an old rev", call, f"{show(message)}, was {show(before)}")
        self._remember(message)

    def _ok_search_messages(self, event: str, call: str, payload: dict[str, Any], group: str | None,
                            expect: Expect, ack: dict[str, Any]) -> None:
        """Every result is a live message of the groups asked, below ``before_seq``, in its
        current state, newest first, holding the query's words; at most ``limit``."""
        results, limit, before = ack["results"], payload.get("limit") or 50, payload.get("before_seq")
        if not isinstance(results, list) or len(results) > limit or not isinstance(ack["has_more"], bool):
            self.problem("search_messages answered more than its limit", call, show(ack))
            return
        groups = {group} if group else {MATHS, PHYSICS}
        words = [folded(w) for w in plain_words(payload["query"])] if _query_verdict(payload["query"]) else []
        for message in results:
            if not isinstance(message, dict) or set(message) != MESSAGE_FIELDS:
                self.problem("search result is not a message object", call, show(message))
                return
            if message["group_id"] not in groups or message["deleted"] or (before and message["seq"] >= before):
                self.problem("search found a message outside what was asked", call, show(message))
            elif not self.dirty and message != self.messages.get(message["id"]):
                self.problem("search result is not the message's current state", call, show(message))
            elif not all(w in folded(message["content"]) for w in words):
                self.problem("search result does not hold the query's words", call, show(message))
        times = [(m["timestamp"], m["id"]) for m in results]
        if times != sorted(times, reverse=True):
            self.problem("search results are not newest first", call, show(times))

    SUCCESS: dict[str, Callable[..., None]] = {
        "list_groups": _ok_list_groups, "leave_group": _ok_empty, "typing": _ok_empty,
        "join_group": _ok_join_group, "get_history": _ok_get_history, "mark_read": _ok_mark_read,
        "send_message": _ok_send_message, "search_messages": _ok_search_messages,
        **dict.fromkeys(CHANGES, _ok_change),
    }

    def _remember(self, message: dict[str, Any]) -> None:
        self.messages[message["id"]] = message
        if message["sender_id"] == ANA and message["client_msg_id"] is not None:
            self.client_ids.setdefault((message["group_id"], message["client_msg_id"]), message["id"])

    # - the model's view of a group -

    def message_in(self, group: str, message_id: str, *, live: bool = False) -> dict[str, Any] | None:
        """The group's message (and not deleted, if ``live``), as last answered."""
        message = self.messages.get(message_id.lower())
        if message is None or message["group_id"] != group or live and message["deleted"]:
            return None
        return message

    def _of(self, group: str) -> list[dict[str, Any]]:
        return sorted((m for m in self.messages.values() if m["group_id"] == group), key=lambda m: m["seq"])

    def _latest(self, group: str) -> int:
        return max((m["seq"] for m in self._of(group)), default=0)

    def _latest_rev(self, group: str) -> int:
        return max((m["rev"] for m in self._of(group)), default=0)

    def _unread(self, group: str, marker: int) -> int:
        return sum(1 for m in self._of(group) if m["sender_id"] != ANA and not m["deleted"] and m["seq"] > marker)

    def _mentioned(self, group: str, marker: int) -> int:
        return sum(1 for m in self._of(group) if matches(m, "mentions") and m["seq"] > marker)

    def _open_questions(self, group: str) -> int:
        return sum(1 for m in self._of(group) if matches(m, "unanswered"))

    def _summary(self, group: str) -> dict[str, Any]:
        marker = self.read[group] or 0
        return {"id": group, "name": GROUP_NAMES[group], "latest_seq": self._latest(group),
                "latest_rev": self._latest_rev(group), "unread_count": self._unread(group, marker),
                "mention_count": self._mentioned(group, marker), "open_questions": self._open_questions(group)}

    def _page(self, group: str, limit: int, *, after: int | None, before: int | None,
              only: str | None = None) -> tuple[list, bool]:
        messages = [m for m in self._of(group) if only is None or matches(m, only)]
        if after is not None:
            newer = [m for m in messages if m["seq"] > after]
            return newer[:limit], len(newer) > limit
        older = [m for m in messages if before is None or m["seq"] < before]
        return older[-limit:], len(older) > limit

    def _check_page(self, call: str, ack: dict[str, Any], page: tuple[list, bool], exact: bool) -> None:
        seqs = [m.get("seq") for m in ack["messages"]]
        if seqs != sorted(set(seqs)):
            self.problem("page is not oldest to newest, once each", call, show(seqs))
        elif exact and (ack["messages"], ack["has_more"]) != page:
            self.problem("page differs from what was acknowledged", call,
                         f"got seqs {seqs} has_more={ack['has_more']}, expected "
                         f"{[m['seq'] for m in page[0]]} has_more={page[1]}")

    # - staying up -

    async def _still_serving(self, call: str) -> bool:
        """Ana's own connection answers a control call; reconnect her when it does not."""
        if self.ana.sio.connected:
            try:
                ack = await self.ana.sio.call("list_groups", timeout=LATE)
                if isinstance(ack, dict) and ack.get("ok") is True:
                    return True
                self.problem("control call on the fuzzing connection refused", call, show(ack))
                return False
            except socketio.exceptions.TimeoutError:
                self.problem("fuzzing connection stopped answering", call)
            except Exception as exc:
                self.problem(f"fuzzing connection failed: {type(exc).__name__}", call, str(exc))
        else:
            self.problem("fuzzing connection was closed", call)
        old = self.ana
        self.ana = await self.connect(ANA)
        try:
            await asyncio.wait_for(old.sio.disconnect(), LATE)
        except (TimeoutError, Exception):
            pass
        return False

    async def _control_served(self, call: str) -> None:
        try:
            ack = await self.ben.sio.call("list_groups", timeout=LATE)
        except Exception as exc:
            self.problem("control client not served", call, f"{type(exc).__name__}: {exc}")
            return
        if not (isinstance(ack, dict) and ack.get("ok") is True and [g["id"] for g in ack["groups"]] == [MATHS]):
            self.problem("control client answered wrongly", call, show(ack))

    async def _follow_unacked(self, event: str, args: tuple[Any, ...], expect: Expect) -> None:
        """Account for what a no-ack event may have changed, through the observers."""
        if event == "mark_read" and expect.code in ("ok", None):
            self.read = {g: None for g in self.read}
        if event not in ("send_message", *CHANGES) or expect.code not in ("ok", None):
            return
        payload = as_server_reads(args[0])
        group = payload["group_id"].lower() if verdict("id", payload.get("group_id")) else None
        if event == "send_message" and expect.effect != "duplicate":
            self.unacked_sends.append((group, payload.get("content")))
        elif event != "send_message" and expect.effect != "noop":
            self.unacked_changes += 1
        if expect.code == "ok" and expect.effect in ("store", "change"):
            observer = self.observer[group]
            if expect.effect == "store":
                def arrived() -> Any:
                    return [m for m in observer.events("message")
                            if m["id"] not in self.messages and m["content"] == payload["content"]]
            else:
                def arrived() -> Any:
                    return [m for m in observer.events(CHANGES[event]) if m["id"] == expect.message_id
                            and m["rev"] > self.messages[expect.message_id]["rev"]]
            try:
                await observer.wait_for(arrived, timeout=LATE)
            except AssertionError:
                self.problem("accepted no-ack event was not broadcast", f"ana.emit({event!r}, {show(payload)})")
        await self.resync()

    async def resync(self) -> None:
        """Take the store's word for the messages (after a change nobody acknowledged)."""
        await self.ben.settle()
        await self.carol.settle()
        for group in GROUP_NAMES:
            for message in await self.history(group):
                self._remember(message)
        self.dirty = bool(self.pending)

    async def history(self, group: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            ack = await self.ana.call("get_history", {"group_id": group, "after_seq": len(messages), "limit": 100})
            assert ack["ok"], ack
            messages += ack["messages"]
            if not ack["has_more"]:
                return messages

    # - the end of a run -

    async def finish(self) -> None:
        if self.pending:
            await asyncio.wait([task for *_, task in self.pending])
            for event, args, expect, call, task in self.pending:
                self._judge(event, args, expect, call, task)
            self.pending.clear()
        await self._still_serving("(end of run)")
        await self.ben.settle()
        await self.carol.settle()
        for group, observer in self.observer.items():
            self._check_group(group, observer, await self.history(group))
        for name, observer in (("Ben", self.ben), ("Carol", self.carol)):
            odd = {event for event, _ in observer.received} - SERVER_EVENTS
            if odd:
                self.problem(f"{name} received undocumented events {sorted(odd)}", "(whole run)")
        assert self.ana.sio.connected
        assert not self.problems, report(self.problems, self.exchanges)

    def _check_group(self, group: str, observer: ChatClient, stored: list[dict[str, Any]]) -> None:
        where = f"(whole run, {GROUP_NAMES[group]})"
        seqs = [m["seq"] for m in stored]
        if seqs != list(range(1, len(stored) + 1)):
            self.problem("stored seqs are not 1..N", where, show(seqs))
        stream = observer.events("message")
        if any(m["group_id"] != group for m in stream):
            self.problem("observer got another group's message", where)
        if [m["seq"] for m in stream] != list(range(1, len(stream) + 1)):
            self.problem("observer did not get 1..N once each in order", where, show([m["seq"] for m in stream]))
        if [m["id"] for m in stream] != [m["id"] for m in stored]:
            self.problem("observer's messages differ from the stored history", where,
                         f"{len(stream)} broadcast, {len(stored)} stored")
        broadcast = {m["id"]: m for m in stream}
        acked = [m for m in self.sent if m["group_id"] == group]
        for message in acked:
            if broadcast.get(message["id"]) != message:
                self.problem("acknowledged send not broadcast as acknowledged", where, show(message))
        allowed = Counter(content for g, content in self.unacked_sends if g == group)
        acked_ids = {m["id"] for m in acked}
        for message in stream:
            if message["id"] in acked_ids:
                continue
            if message["sender_id"] != ANA or allowed[message["content"]] <= 0:
                self.problem("stored message that no send accounts for", where, show(message))
            allowed[message["content"]] -= 1
        current = dict(broadcast)
        changes = [(e, m) for e, m in observer.received if e in ("message_updated", "message_deleted")]
        for _event, message in changes:
            current[message["id"]] = message
        if [current.get(m["id"]) for m in stored] != stored:
            self.problem("stored history differs from the broadcasts replayed", where)
        acked_changes = [(e, m) for e, m in self.changes if m["group_id"] == group]
        for change in acked_changes:
            if change not in changes:
                self.problem("acknowledged change not broadcast as acknowledged", where, show(change))
        if len(changes) - len(acked_changes) > self.unacked_changes:
            self.problem("changes broadcast that nobody acknowledged or sent", where)
        revs = [m["rev"] for e, m in observer.received if e in ("message", *CHANGES.values())]
        if revs != list(range(1, max((m["rev"] for m in stored), default=0) + 1)):
            self.problem("observer did not get every rev once, in order", where, show(revs))
        if not self.dirty and stored != self._of(group):
            self.problem("stored history differs from the acknowledged sends and changes", where)


def matches(message: dict[str, Any], only: str) -> bool:
    """Whether Ana's ``get_history`` filter ``only`` shows ``message``; deleted ones match none."""
    if message["deleted"]:
        return False
    if only == "mentions":
        return message["sender_id"] != ANA and ANA in message["mentions"]
    if only == "pinned":
        return message["pinned"] is not None
    return message["kind"] == "question" and (only == "questions" or message["answer_id"] is None)


def tally(rig: Rig) -> str:
    return "; ".join(f"{event} {code}: {n}" for (event, code), n in sorted(rig.outcomes.items()))


def report(problems: list[Problem], exchanges: int) -> str:
    kinds: dict[str, list[Problem]] = {}
    for problem in problems:
        kinds.setdefault(problem.what, []).append(problem)
    lines = [f"{len(problems)} violations in {exchanges} exchanges; the shortest input of each kind:"]
    for what, seen in sorted(kinds.items()):
        shortest = min(seen, key=lambda p: len(p.call))
        lines.append(f"- {what} ({len(seen)}x): {shortest.call}" + (f"\n    -> {shortest.detail}" if shortest.detail else ""))
    return "\n".join(lines)


@pytest.fixture
async def rig(connect) -> Rig:
    ben, carol = await connect(BEN), await connect(CAROL)
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    assert (await carol.call("join_group", {"group_id": PHYSICS}))["ok"]
    rig = Rig(connect, await connect(ANA), ben, carol)
    await rig.exercise("send_message", ({"group_id": MATHS, "content": f"Ana's {SECRET_WORD}", "client_msg_id": "seed-1"},))
    await rig.exercise("send_message", ({"group_id": PHYSICS, "content": f"Ana's physics {SECRET_WORD}"},))
    # Ben's messages: one Ana may not edit, a question she may not accept answers to
    # that mentions her, a reaction hers join and a pin hers keeps.
    for payload in ({"content": f"Ben's {SECRET_WORD}"}, {"content": "Ben asks Ana?", "kind": "question",
                                                          "mentions": [ANA, CAROL]}):
        bens = await ben.call("send_message", {"group_id": MATHS, **payload})
        rig._remember(bens["message"])
        rig.sent.append(bens["message"])
    first = rig._of(MATHS)[0]["id"]
    for event, payload in (("react", {"message_id": first, "emoji": VALID_EMOJI[0], "on": True}),
                           ("pin_message", {"message_id": bens["message"]["id"], "pinned": True})):
        changed = await ben.call(event, {"group_id": MATHS, **payload})
        rig._remember(changed["message"])
        rig.changes.append(("message_updated", changed["message"]))
    await rig.exercise("send_message", ({"group_id": MATHS, "content": "Ana again"},))
    await rig.exercise("send_message", ({"group_id": PHYSICS, "content": "Ana asks?", "kind": "question"},))
    # An answer after Ana's question, so that accept_answer's success path does not hang on the
    # fuzzer happening to send one to Physics before it happens to delete the question.
    await rig.exercise("send_message", ({"group_id": PHYSICS, "content": "Ana answers"},))
    assert not rig.problems, report(rig.problems, rig.exchanges)
    return rig


# -- valid payloads, and exactly one thing changed --

def _target(draw: Callable[..., Any], gid: str, rig: Rig, mine: bool = False) -> str:
    """A message id: mostly of the group (Ana's own when ``mine``), else someone else's or another group's."""
    whose = draw(st.sampled_from(["here", "here", "here", "here", "someone else's", "elsewhere"]))
    candidates = sorted(
        m["id"] for m in rig.messages.values()
        if {"here": m["group_id"] == gid and (m["sender_id"] == ANA or not mine),
            "someone else's": m["sender_id"] != ANA,
            "elsewhere": m["group_id"] != gid}[whose]
    )
    return pick(draw, candidates or [NOWHERE])


def _valid_join_group(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    payload: dict[str, Any] = {"group_id": group}
    if draw(st.booleans()):
        payload["since_seq"] = draw(PICK) % (rig._latest(group.lower()) + 3)
    if draw(st.booleans()):
        payload["limit"] = draw(st.integers(1, 100))
    return payload


def _valid_send_message(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    gid = group.lower()
    payload = {"group_id": group, "content": "m" + draw(texts(40, surrogates=False))}
    cid = draw(st.one_of(st.none(), st.integers(0, 10**9).map(lambda n: f"c-{n}"),
                         known(lambda: sorted(c for g, c in rig.client_ids if g == gid), "c-0")))
    if cid is not None:
        payload["client_msg_id"] = cid
    if draw(st.booleans()):
        payload["sender_id"] = draw(st.sampled_from([ANA, ANA.upper()]))
    if draw(st.booleans()):
        payload["kind"] = draw(st.sampled_from(KINDS))
    if draw(st.integers(0, 3)) == 0:  # Ben is not in Physics, Dan in no group
        payload["mentions"] = draw(st.lists(st.sampled_from([ANA, BEN, CAROL, CAROL.upper(), DAN]), max_size=3,
                                            unique_by=str.lower))
    if draw(st.integers(0, 3)) == 0:
        payload["reply_to"] = _target(draw, gid, rig)
    return payload


def _valid_get_history(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    latest = rig._latest(group.lower())
    payload: dict[str, Any] = {"group_id": group}
    which = draw(st.sampled_from(["latest", "before", "after"]))
    if which == "before":
        payload["before_seq"] = 1 + draw(PICK) % (latest + 2)
    elif which == "after":
        payload["after_seq"] = draw(PICK) % (latest + 2)
    if draw(st.booleans()):
        payload["limit"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        payload["filter"] = draw(st.sampled_from(FILTERS))
    return payload


def _valid_own_change(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    return {"group_id": group, "message_id": _target(draw, group.lower(), rig, mine=True)}


def _valid_accept_answer(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    gid = group.lower()
    whose = draw(st.sampled_from(["Ana's", "Ana's", "someone else's", "any message"]))
    questions = sorted(m["id"] for m in rig._of(gid) if m["kind"] == "question"
                       and (m["sender_id"] == ANA) == (whose == "Ana's"))
    # Every draw is made whatever is stored (see ``PICK``); what is stored only picks among them.
    i, other = draw(PICK), _target(draw, gid, rig)
    question = questions[i % len(questions)] if questions and whose != "any message" else other
    seq = rig.messages[question]["seq"] if question in rig.messages else 0
    later = sorted(m["id"] for m in rig._of(gid) if m["seq"] > seq)
    answer, other = draw(st.sampled_from(["later", "later", "later", "null", "any"])), _target(draw, gid, rig)
    answer_id = None if answer == "null" else pick(draw, later) if answer == "later" and later else other
    return {"group_id": group, "question_id": question, "answer_id": answer_id}


def _valid_search_messages(draw: Callable[..., Any], group: str, rig: Rig) -> dict[str, Any]:
    # A word of a stored message (prefix or whole), or a fixed one.
    stored = sorted({w for m in rig._of(group.lower()) for w in m["content"].split() if w.isascii() and w.isalnum()})
    word = pick(draw, stored) if stored else "hello"
    cut = draw(st.integers(1, 8))
    payload: dict[str, Any] = {"query": draw(st.sampled_from([word, word[:cut], "hello world", SECRET_WORD, "zzz"]))}
    if draw(st.booleans()):
        payload["group_id"] = group
    if draw(st.booleans()):
        payload["limit"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        payload["before_seq"] = 1 + draw(PICK) % (rig._latest(group.lower()) + 2)
    return payload


VALID_PAYLOADS: dict[str, Callable[[Callable[..., Any], str, Rig], dict[str, Any]]] = {
    "list_groups": lambda draw, group, rig: {},
    "join_group": _valid_join_group,
    "leave_group": lambda draw, group, rig: {"group_id": group},
    "send_message": _valid_send_message,
    "get_history": _valid_get_history,
    "typing": lambda draw, group, rig: {"group_id": group, "is_typing": draw(st.booleans())},
    "mark_read": lambda draw, group, rig: {"group_id": group, "seq": draw(st.one_of(
        PICK.map(lambda i: i % (rig._latest(group.lower()) + 4)), st.just(MAX_SAFE)))},
    "edit_message": lambda draw, group, rig: {**_valid_own_change(draw, group, rig),
                                              "content": "e" + draw(texts(40, surrogates=False))},
    "delete_message": _valid_own_change,
    "react": lambda draw, group, rig: {"group_id": group, "message_id": _target(draw, group.lower(), rig),
                                       "emoji": draw(st.sampled_from(VALID_EMOJI)), "on": draw(st.booleans())},
    "pin_message": lambda draw, group, rig: {"group_id": group, "message_id": _target(draw, group.lower(), rig),
                                             "pinned": draw(st.booleans())},
    "accept_answer": _valid_accept_answer,
    "search_messages": _valid_search_messages,
}


def valid_payload(draw: Callable[..., Any], event: str, rig: Rig) -> dict[str, Any]:
    return VALID_PAYLOADS[event](draw, draw(st.sampled_from([MATHS, PHYSICS, MATHS.upper()])), rig)


def mutate(draw: Callable[..., Any], event: str, payload: dict[str, Any], rig: Rig, values: Callable[[str], Any]) -> dict[str, Any]:
    """Leave the payload valid, or change exactly one thing: replace, null, remove or add a field."""
    how = draw(st.sampled_from(["as is", "as is", "replace", "replace", "replace", "replace", "null", "remove", "add"]))
    spec = FIELDS[event]
    payload = dict(payload)
    if how == "replace" and spec:
        name = draw(st.sampled_from(sorted(spec)))
        payload[name] = draw(values(spec[name][0]))
    elif how == "null" and spec:
        payload[draw(st.sampled_from(sorted(spec)))] = None
    elif how == "remove" and payload:
        del payload[draw(st.sampled_from(sorted(payload)))]
    elif how == "add":
        payload[draw(KEYS)] = draw(values("any"))
    return payload


async def test_valid_payloads_with_one_field_replaced(rig):
    """Every event, valid or with one field replaced, nulled, removed or added; ack and no-ack."""

    def step(draw):
        event = draw(st.sampled_from(EVENTS))
        base = valid_payload(draw, event, rig)
        payload = mutate(draw, event, base, rig, lambda kind: VALUES if kind == "any" else value_for(kind, rig))
        hypothesis.assume(frame_size(event, (payload,)) <= FRAME_BUDGET)
        return rig.exercise(event, (payload,), ack=draw(ACK))

    await explore(1000, step)
    await rig.finish()
    # The inputs reached every event's success path and the deep refusals.
    assert {event for event, code in rig.outcomes if code == "ok"} == set(EVENTS), tally(rig)
    codes = {code for _, code in rig.outcomes}
    assert codes >= {"invalid_payload", "forbidden", "group_not_found", "message_not_found"}, tally(rig)
    assert rig.outcomes["send_message", "ok"] >= 20 and rig.outcomes["edit_message", "ok"] >= 3, rig.outcomes
    # Reactions, pins and answers both changed messages and answered calls that changed nothing.
    for effect in ("change", "noop"):
        assert sum(rig.effects[e, effect] for e in ("react", "pin_message", "accept_answer")) >= 3, rig.effects


async def test_every_event_name_with_arbitrary_json_arguments(rig):
    """Known, odd and random event names with none, one or several arbitrary JSON arguments."""

    def step(draw):
        event = draw(EVENT_NAMES)
        shape = draw(st.sampled_from(["object", "object", "value", "none", "several"]))
        if shape == "none":
            args: tuple[Any, ...] = ()
        elif shape == "several":
            args = tuple(draw(st.lists(VALUES, min_size=2, max_size=4)))
        else:
            args = (draw(st.dictionaries(KEYS, VALUES, max_size=5) if shape == "object" else VALUES),)
        hypothesis.assume(frame_size(event, args) <= FRAME_BUDGET)
        return rig.exercise(event, args, ack=draw(ACK))

    await explore(500, step)
    # And each known event with a few fixed odd shapes, whatever mix the draws above had.
    for event in EVENTS:
        for args in ((), ({},), ([],), ("x",), ({"group_id": 1, "extra": None},), (None, None)):
            await rig.exercise(event, args, ack=True)
    await rig.finish()
    assert {event for event, _ in rig.outcomes} == set(EVENTS) | {"<other event>"}, tally(rig)


async def test_binary_attachments_anywhere(rig):
    """Bytes in place of a field, nested in a value, as an extra field, as the payload or next to it."""

    def step(draw):
        event = draw(st.one_of(st.sampled_from(EVENTS), st.sampled_from(ODD_NAMES[3:])))
        shape = draw(st.sampled_from(["field", "field", "field", "extra", "payload", "several"]))
        if shape in ("field", "extra") and event in FIELDS:
            base = valid_payload(draw, event, rig)
            spec = FIELDS[event]
            name = draw(st.sampled_from(sorted(spec))) if shape == "field" and spec else draw(KEYS)
            args: tuple[Any, ...] = ({**base, name: draw(BINARY_VALUES.filter(contains_bytes))},)
        elif shape == "several":
            args = tuple(draw(st.lists(BINARY_VALUES, min_size=2, max_size=3)))
        else:
            args = (draw(BINARY_VALUES),)
        hypothesis.assume(contains_bytes(list(args)) and frame_size(event, args) <= FRAME_BUDGET)
        return rig.exercise(event, args)  # without an ack id, a binary packet closes the connection

    await explore(400, step)
    await rig.finish()
    assert {event for event, _ in rig.outcomes} >= set(EVENTS), tally(rig)


async def test_one_emoji_and_one_pin_too_many(rig):
    """The limits the fuzzing runs never reach, through the same predictor and
    reconciliation: a 21st different emoji on a message, a 51st pin in a group."""
    target = rig._of(PHYSICS)[0]["id"]

    async def react(emoji: str, on: bool = True) -> None:
        await rig.exercise("react", ({"group_id": PHYSICS, "message_id": target, "emoji": emoji, "on": on},))

    for emoji in [*VALID_EMOJI, *MORE_EMOJI][:MAX_EMOJI_PER_MESSAGE]:
        await react(emoji)
    await react(MORE_EMOJI[-1])  # one too many
    await react(VALID_EMOJI[0], on=False)  # taking one back is no new emoji
    await react(VALID_EMOJI[1])  # nor is an emoji already there
    await react(MORE_EMOJI[-1])  # and now there is room
    for i in range(MAX_PINNED_PER_GROUP):
        await rig.exercise("send_message", ({"group_id": PHYSICS, "content": f"pin me {i}"},))
    for message in rig._of(PHYSICS)[-MAX_PINNED_PER_GROUP:]:
        await rig.exercise("pin_message", ({"group_id": PHYSICS, "message_id": message["id"], "pinned": True},))
    await rig.exercise("pin_message", ({"group_id": PHYSICS, "message_id": target, "pinned": True},))
    await rig.exercise("pin_message", ({"group_id": PHYSICS, "message_id": rig._of(PHYSICS)[-1]["id"], "pinned": True},))
    await rig.exercise("delete_message", ({"group_id": PHYSICS, "message_id": rig._of(PHYSICS)[-1]["id"]},))
    await rig.exercise("pin_message", ({"group_id": PHYSICS, "message_id": target, "pinned": True},))  # room again
    await rig.exercise("get_history", ({"group_id": PHYSICS, "filter": "pinned", "limit": 100},))
    await rig.finish()
    assert (rig.outcomes["react", "invalid_payload"], rig.outcomes["pin_message", "invalid_payload"]) == (1, 1), tally(rig)
    assert rig.effects["react", "change"] == MAX_EMOJI_PER_MESSAGE + 2 and rig.effects["react", "noop"] == 1, rig.effects


# -- raw Socket.IO frames --

MALFORMED = [
    "", "[]", "{}", "[5]", "[{}]", "[null]", "[[]]", '["list_groups"', "[", "1", "1[]", "12", "/", "/x,1[]",
    "/,1[\"list_groups\"]", "1-[]", "-1[]", '"list_groups"', "[\"list_groups\",]", "null", "1e5[]",
    "9" * 120 + '["list_groups"]', '[true,{}]', '[{"a":1},{}]', '["list_groups",NaN]', '[1.5]',
]


def _dumps(value: Any, ascii_only: bool) -> str:
    """JSON text as a client would send it; a lone surrogate can only travel escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return json.dumps(value) if ascii_only or _has_surrogate(text) else text


@pytest.fixture
async def watched(connect) -> ChatClient:
    ben = await connect(BEN)
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    await ben.settle()
    return ben


async def test_raw_event_frames_never_stop_the_connection(server_url, watched):
    """Any text after ``42`` (Socket.IO EVENT): the connection keeps answering, nothing is stored."""
    problems: list[Problem] = []
    frames = st.one_of(
        st.sampled_from(MALFORMED),
        texts(30, surrogates=False),
        st.builds(lambda ack_id, value, ascii_only: ack_id + _dumps(value, ascii_only),
                  st.sampled_from(["", "1", "77"]), json_values(LEAVES), st.booleans()),
    )
    async with aiohttp.ClientSession() as session:
        raw = [await RawSocket.open(session, server_url, make_token(ANA))]
        counter = iter(range(10**9, 2 * 10**9))

        async def exchange(frame: str) -> None:
            call = f"websocket.send_str({'42' + frame!r})"
            try:
                await raw[0].ws.send_str("42" + frame)
                ack_id = next(counter)
                await raw[0].ws.send_str(f'42{ack_id}["list_groups"]')
                answer = await raw[0].ack(ack_id)
            except Exception as exc:
                answer = f"{type(exc).__name__}: {exc}"
            raw[0].replies.clear()
            if not (isinstance(answer, dict) and answer.get("ok") is True):
                problems.append(Problem("connection stopped answering after a raw frame", call, show(answer)))
                await raw[0].ws.close()
                raw[0] = await RawSocket.open(session, server_url, make_token(ANA))
            control = await watched.call("list_groups")
            if not control["ok"]:
                problems.append(Problem("control client not served", call, show(control)))

        def step(draw):
            frame = draw(frames)
            # A packet for a namespace the connection is not in closes it (test_socketio_conformance).
            hypothesis.assume(not frame.startswith("/") or frame.split(",", 1)[0].split("?", 1)[0] == "/")
            return exchange(frame)

        await explore(400, step)
        await raw[0].ws.close()
    await watched.settle()
    assert [e for e, _ in watched.received if e in ("message", "message_updated", "message_deleted")] == []
    history = await watched.call("get_history", {"group_id": MATHS})
    assert history == {"ok": True, "messages": [], "has_more": False}
    assert not problems, report(problems, 400)


# -- HTTP --

def _tokens() -> list[tuple[str | None, str | None]]:
    """(Authorization header, the user it signs in), for every kind of credential."""
    other = "another-secret-that-is-also-long-enough-for-hs256"
    cases: list[tuple[str | None, str | None]] = [(None, None), ("", None), ("Bearer", None), ("Bearer ", None)]
    for user in (ANA, BEN, DAN, EVE):
        token = make_token(user)
        cases += [(f"Bearer {token}", user), (f"bearer {token}", user), (f"Bearer  {token} ", user),
                  (f"Basic {token}", None), (f"Token {token}", None), (token, None), (f"Bearer {token}x", None)]
        cases += [(f"Bearer {make_token(user, ttl=-60)}", None), (f"Bearer {make_token(user, secret=other)}", None)]
    cases += [(f"Bearer {make_token(ANA.upper())}", ANA), (f"Bearer {make_token('zz' * 12)}", None),
              ("Bearer a.b.c", None), ("Bearer eyJhbGciOiJub25lIn0.e30.", None)]
    return cases


HEADER_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60)
QUERY_KEYS = st.one_of(st.sampled_from(["limit", "before_seq", "after_seq", "filter"] * 3 + [
    "LIMIT", "limit[]", "after_seq ", "Filter", "token", "access_token", "group_id"]), texts(8))
QUERY_VALUES = st.one_of(
    st.integers(-5, 120).map(str),
    st.sampled_from(FILTERS), SPECIFIC["filter"],
    st.sampled_from(["", "0", "1", "100", "101", "-1", "-0", str(MAX_SAFE), str(MAX_SAFE + 1), "9" * 20, "9" * 25,
                     "+5", " 5", "5 ", "05", "5.0", "1e2", "0x10", "\u0663", "\uff15", "true", "null", "NaN",
                     "5\n", "5\x00", "\u200b5"]),
    texts(10),
)
INT_TEXT = re.compile(r"-?[0-9]+")


def expect_http(route: str, group: str, query: list[tuple[str, str]], user: str | None) -> tuple[int | None, dict]:
    """(status, get_history parameters) the protocol fixes; status ``None`` where it leaves it open."""
    if route == "messages" and group == "":
        return 404, {}  # /study-groups//messages: no id at all, so not the history route
    if user is None:
        return 401, {}
    if route == "groups":
        return 200, {}
    first: dict[str, str] = {}
    for key, value in query:
        first.setdefault(key, value)
    bad = unsure = False
    params: dict[str, Any] = {}
    if "filter" in first:
        if first["filter"] in FILTERS:
            params["filter"] = first["filter"]
        else:
            bad = True
    for name, low, high in (("limit", 1, 100), ("before_seq", 1, MAX_SAFE), ("after_seq", 0, MAX_SAFE)):
        if name not in first:
            continue
        value = first[name]
        if INT_TEXT.fullmatch(value):
            if low <= int(value) <= high:
                params[name] = int(value)
            else:
                bad = True
        elif value == "" or not any(c.isdigit() for c in value):
            bad = True
        else:
            unsure = True
    bad |= not HEX24.fullmatch(group) or ("before_seq" in params and "after_seq" in params)
    if bad:
        return 400, {}
    if unsure:
        return None, {}
    group = group.lower()
    if group not in GROUP_NAMES:
        return 404, {}
    if group == PHYSICS and user != ANA or group == MATHS and user not in (ANA, BEN):
        return 403, {}
    return 200, params


STATUS_CODE = {400: "invalid_payload", 401: "unauthorized", 403: "not_member", 404: "group_not_found"}
GROUPS_OF = {ANA: [MATHS, PHYSICS], BEN: [MATHS], DAN: [], EVE: []}


async def test_http_routes_with_arbitrary_ids_queries_and_credentials(connect, server_url, watched):
    ana = await connect(ANA)
    for i in range(3):
        kind = "question" if i == 1 else "message"
        assert (await ana.call("send_message", {"group_id": MATHS, "content": f"{SECRET_WORD} {i}", "kind": kind}))["ok"]
    assert (await ana.call("send_message", {"group_id": PHYSICS, "content": f"physics {SECRET_WORD}"}))["ok"]
    await watched.wait_event("message", 3)
    problems: list[Problem] = []
    statuses: Counter[tuple[str, int]] = Counter()
    credentials = st.one_of(st.sampled_from(_tokens()), HEADER_TEXT.map(lambda h: (h, None)),
                            HEADER_TEXT.map(lambda h: (f"Bearer {h}", None)))
    path_ids = st.one_of(ids().filter(lambda v: isinstance(v, str)), texts(30))

    async with aiohttp.ClientSession() as http:
        async def exchange(route: str, group: str, query: list[tuple[str, str]], header: str | None,
                           user: str | None) -> None:
            path = "/study-groups" if route == "groups" else f"/study-groups/{quote(group, safe='', errors='surrogatepass')}/messages"
            qs = "&".join(f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}"
                          for k, v in query)
            url = yarl.URL(f"{server_url}{path}" + (f"?{qs}" if qs else ""), encoded=True)
            call = f"GET {path}{'?' + qs if qs else ''}  Authorization: {show(header, 120)}"
            status, params = expect_http(route, group, query, user)
            resp = await http.get(url, headers={} if header is None else {"Authorization": header})
            text = await resp.text()
            statuses[route, resp.status] += 1
            if status == 404 and route == "messages" and group == "":
                if resp.status != 404:
                    problems.append(Problem("empty group id is not 404", call, f"{resp.status} {show(text)}"))
                return
            if resp.status not in (200, 400, 401, 403, 404):
                problems.append(Problem(f"undocumented status {resp.status}", call, show(text)))
                return
            if status is not None and resp.status != status:
                problems.append(Problem(f"{route}: expected {status}, got {resp.status}", call, show(text)))
                return
            try:
                body = json.loads(text)
            except ValueError:
                problems.append(Problem("answer is not JSON", call, show(text)))
                return
            if resp.status != 200:
                what = envelope_problems(body)
                if what or body["error"]["code"] != STATUS_CODE[resp.status]:
                    problems.append(Problem(f"{resp.status} answer is not the {STATUS_CODE[resp.status]} envelope",
                                            call, show(body)))
                if SECRET_WORD in text:
                    problems.append(Problem("refusal leaks message content", call, show(body)))
            elif route == "groups":
                if [g.get("id") for g in body.get("groups", [])] != GROUPS_OF[user] or set(body) != {"ok", "groups"}:
                    problems.append(Problem("groups route answers the wrong groups", call, show(body)))
                elif user == ANA and body != await ana.call("list_groups"):
                    problems.append(Problem("groups route differs from list_groups", call, show(body)))
            elif status == 200:
                statuses["filtered", 200] += "filter" in params
                via_event = await ana.call("get_history", {"group_id": group, **params})
                if body != via_event:
                    problems.append(Problem("history route differs from get_history", call,
                                            f"{show(body)} != {show(via_event)}"))
            control = await watched.call("list_groups")
            if not control["ok"]:
                problems.append(Problem("control client not served", call, show(control)))

        def step(draw):
            header, user = draw(credentials)
            route = draw(st.sampled_from(["messages", "messages", "messages", "groups"]))
            group = draw(path_ids) if route == "messages" else ""
            query = draw(st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=4))
            return exchange(route, group, query, header, user)

        # A few answers random credentials rarely reach, so every documented status is checked.
        ana_header, dan_header = f"Bearer {make_token(ANA)}", f"Bearer {make_token(DAN)}"
        await exchange("messages", MATHS, [("limit", "2")], ana_header, ANA)
        await exchange("messages", PHYSICS, [("after_seq", "0")], ana_header, ANA)
        await exchange("messages", MATHS, [], dan_header, DAN)
        await exchange("messages", MATHS, [("filter", "questions"), ("limit", "1")], ana_header, ANA)
        await exchange("messages", MATHS, [("filter", "everything")], ana_header, ANA)
        await explore(600, step)
    await watched.settle()
    assert [m["content"] for m in watched.events("message")] == [f"{SECRET_WORD} {i}" for i in range(3)]
    assert len(watched.received) == 3  # HTTP reads broadcast nothing
    assert not problems, report(problems, 600)
    # The inputs reached every documented answer of both routes.
    assert set(statuses) >= {("messages", s) for s in (200, 400, 401, 403, 404)} | {
        ("groups", 200), ("groups", 401)}, statuses
    assert statuses["filtered", 200] >= 1, statuses  # a filtered history answered, equal to get_history's


# -- explicit reproducers for what fuzzing found (and must stay fixed) --

@pytest.mark.parametrize(
    ("event", "args"),
    [("connect", ()), ("connect", ({},)), ("connect", (1, 2, 3)), ("disconnect", ()),
     ("*", ()), ("*", ({},)), ("message", ({},)), ("connect_error", ())],
    ids=["connect-no-args", "connect-object", "connect-3-args", "disconnect-no-args",
         "star-no-args", "star-object", "message", "connect_error"],
)
async def test_reserved_and_special_event_names_are_answered(connect, watched, event, args):
    """Every event with an ack gets exactly one answer: an unknown or reserved name is invalid_payload."""
    ana = await connect(ANA)
    asked = asyncio.ensure_future(ana.sio.call(event, args, timeout=QUICK))
    control = await ana.call("list_groups")  # the connection keeps serving either way
    assert control["ok"] is True
    try:
        ack = await asked
    except socketio.exceptions.TimeoutError:
        pytest.fail(f"ana.sio.call({event!r}, {args!r}) was never answered; expected invalid_payload")
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    await watched.settle()
    assert [e for e, _ in watched.received if e != "presence"] == []


@pytest.mark.parametrize("num", [1, -2, "0", [0], 0], ids=["past-the-end", "negative", "string", "list", "in-range"])
async def test_binary_event_carrying_a_placeholder_shaped_object_is_answered(connect, watched, num):
    """python-socketio (like socket.io-client) sends user objects shaped like its binary
    placeholders unescaped; the server must still answer, and keep answering."""
    ana = await connect(ANA)
    payload = {"group_id": MATHS, "content": "hi", "file": b"\x00\x01", "meta": {"_placeholder": True, "num": num}}
    asked = asyncio.ensure_future(ana.sio.call("send_message", payload, timeout=QUICK))
    after = asyncio.ensure_future(ana.sio.call("get_history", {"group_id": MATHS}, timeout=QUICK))
    answers = await asyncio.gather(asked, after, return_exceptions=True)
    lost = [name for name, answer in zip(("the send", "the next call"), answers) if isinstance(answer, Exception)]
    assert not lost, f"send_message({payload!r}): {' and '.join(lost)} never answered"
    ack, history = answers
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    assert history == {"ok": True, "messages": [], "has_more": False}
    await watched.settle()
    assert watched.events("message") == []


def _deep(depth: int, as_object: bool) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if as_object else ("[" * depth + "]" * depth)


@pytest.mark.parametrize(
    "extra",
    [_deep(500, False), _deep(1000, False), _deep(1000, True), _deep(20_000, False), "1" * 5000],
    ids=["list-500-deep", "list-1000-deep", "object-1000-deep", "list-20000-deep", "integer-5000-digits"],
)
async def test_valid_json_the_parser_may_choke_on_is_still_answered(server_url, watched, extra):
    """Valid JSON in a valid event under 64 KB (socket.io-client sends it in a few KB):
    answered with invalid_payload, like any other unknown field."""
    frame = '421["send_message",{"group_id":"%s","content":"x","extra":%s}]' % (MATHS, extra)
    assert len(frame.encode()) < FRAME_BUDGET
    async with aiohttp.ClientSession() as session:
        raw = await RawSocket.open(session, server_url, make_token(ANA))
        try:
            await raw.ws.send_str(frame)
            await raw.ws.send_str('422["get_history",{"group_id":"%s"}]' % MATHS)
            control = await raw.ack(2)
            assert control == {"ok": True, "messages": [], "has_more": False}  # still serving
            ack = await raw.ack(1, timeout=QUICK)
        finally:
            await raw.ws.close()
    assert ack is not None, f"never answered: {frame[:60]}…{frame[-30:]} ({len(frame)} chars)"
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    await watched.settle()
    assert watched.events("message") == []


@pytest.mark.parametrize("group", ["a{b", "{" + MATHS + "}", "}"], ids=["a{b", "braced-id", "close-brace"])
async def test_history_route_with_braces_in_the_id_answers_the_400_envelope(server_url, group):
    """Any other malformed id is a 400 ``invalid_payload`` envelope; braces are no different."""
    url = yarl.URL(f"{server_url}/study-groups/{quote(group, safe='')}/messages", encoded=True)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(url, headers={"Authorization": f"Bearer {make_token(ANA)}"})
        text = await resp.text()
    assert (resp.status, resp.content_type) == (400, "application/json"), (str(url), resp.status, text)
    body = json.loads(text)
    assert body["ok"] is False and body["error"]["code"] == "invalid_payload", body


@functools.cache  # built once per kind: building (and validating) strategies is most of a draw's cost
def _near(kind: str) -> st.SearchStrategy[Any]:
    """Values of a field's kind, mostly valid, with the odd one of any JSON type."""
    close = {
        "id": ids, "content": lambda: st.one_of(EDGE_CONTENT, texts(8)), "client_msg_id": lambda: texts(10),
        "bool": st.booleans, "id or null": lambda: st.one_of(st.none(), ids()),
        **{name: (lambda s=strategy: s) for name, strategy in SPECIFIC.items()},
    }.get(kind, lambda: st.integers(-2, 120))()
    return st.one_of(close, close, close, close, LEAVES)


@st.composite
def payloads(draw: Callable[..., Any], event: str) -> dict[str, Any]:
    payload = {name: draw(_near(kind)) for name, (kind, required) in FIELDS[event].items()
               if required or draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        payload[draw(KEYS)] = draw(LEAVES)
    return payload


@hypothesis.settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(FIELDS)).flatmap(lambda event: st.tuples(st.just(event), payloads(event))))
def test_the_plain_loader_answers_as_marshmallow_does(case):
    """Valid payloads of every event skip marshmallow's general machinery
    (``schemas._PLAIN``); whatever the payload, the answer is marshmallow's."""
    from marshmallow import ValidationError

    from handlers import schemas

    event, payload = case
    try:
        expected = schemas.SCHEMAS[event].load(payload)
    except ValidationError:
        expected = None
    got = schemas._plain_load(event, payload)
    assert got == expected


@pytest.mark.parametrize("answer_id", [None, ANA], ids=["null", "an-id"])
def test_the_plain_loader_takes_null_for_a_required_nullable_field(answer_id):
    """``accept_answer {answer_id: null}`` takes an acceptance back: a valid payload,
    so the plain loader answers it as marshmallow does instead of declining it."""
    from handlers import schemas

    payload = {"group_id": MATHS, "question_id": BEN, "answer_id": answer_id}
    assert schemas._plain_load("accept_answer", payload) == schemas.SCHEMAS["accept_answer"].load(payload)
    assert schemas._plain_load("accept_answer", {"group_id": MATHS, "question_id": BEN}) is None
