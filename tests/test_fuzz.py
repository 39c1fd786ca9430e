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
exactly the answer the protocol fixes wherever it fixes one (``predict``); the
fuzzing connection stays up and keeps answering; a control client keeps being
served. At the end of each run: every observer (Ben in Maths, Carol in Physics)
saw each stored message of its group exactly once, in ``seq`` order, and nothing
else; the stored history equals exactly the acknowledged sends, edits and
deletions, plus what no-ack events were allowed to do (reconciled through the
observers). HTTP answers are JSON envelopes with documented status codes
(``/study-groups//messages``, with no id at all, is not the route: aiohttp's plain
404 is accepted there and only there).

Not generated here, and why: objects shaped like Socket.IO binary placeholders
(``{"_placeholder": true, "num": N}``) and JSON the server's parser cannot take
(nesting past ~930 levels, integers past 4,300 digits; the python client cannot
even encode them). Each wedges or silences the connection, so they have explicit
tests below instead of drowning every later input in timeouts.
"""

from __future__ import annotations

import asyncio
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

# event -> field -> (kind of value, required); the protocol's field rules.
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "list_groups": {},
    "join_group": {"group_id": ("id", True), "since_seq": ("seq", False), "limit": ("limit", False)},
    "leave_group": {"group_id": ("id", True)},
    "send_message": {
        "group_id": ("id", True), "content": ("content", True),
        "client_msg_id": ("client_msg_id", False), "sender_id": ("id", False),
    },
    "get_history": {
        "group_id": ("id", True), "before_seq": ("before_seq", False),
        "after_seq": ("seq", False), "limit": ("limit", False),
    },
    "typing": {"group_id": ("id", True), "is_typing": ("bool", True)},
    "mark_read": {"group_id": ("id", True), "seq": ("seq", True)},
    "edit_message": {"group_id": ("id", True), "message_id": ("id", True), "content": ("content", True)},
    "delete_message": {"group_id": ("id", True), "message_id": ("id", True)},
}
EVENTS = list(FIELDS)
ALL_FIELD_NAMES = sorted({name for spec in FIELDS.values() for name in spec})


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
    if kind == "id":
        return isinstance(value, str) and HEX24.fullmatch(value) is not None
    if kind == "seq":
        return _int_between(value, 0, MAX_SAFE)
    if kind == "before_seq":
        return _int_between(value, 1, MAX_SAFE)
    if kind == "limit":
        return _int_between(value, 1, 100)
    if kind == "bool":
        return isinstance(value, bool)
    if not isinstance(value, str) or _has_surrogate(value):
        return False
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


@dataclass
class Expect:
    code: str | None  # "ok", an error code, or None where the protocol leaves the answer open
    fields: set[str] = field(default_factory=set)  # what invalid_payload's details must name
    effect: str | None = None  # store, duplicate, edit, delete, redelete
    message_id: str | None = None


def predict(event: str, args: tuple[Any, ...], rig: Rig) -> Expect:
    """The answer Ana (a member of Maths and Physics) must get, from the protocol's rules alone."""
    if event not in FIELDS or contains_bytes(list(args)):  # binary packets are refused whole
        return Expect("invalid_payload")
    if not args:
        return Expect("ok") if event == "list_groups" else Expect("invalid_payload")
    if len(args) > 1:
        return Expect("invalid_payload")
    payload = args[0]
    if payload is None and event == "list_groups":
        return Expect("ok")
    if not isinstance(payload, dict):
        return Expect("invalid_payload")
    spec = FIELDS[event]
    bad: set[str] = set()
    unsure = False
    for key, value in payload.items():
        if key not in spec:
            bad.add(json.loads(json.dumps(key)))  # as the server reads it: JSON joins an escaped surrogate pair
        elif value is None:
            if spec[key][1]:
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
    if event == "list_groups":
        return Expect("ok")
    group = data["group_id"].lower()
    if event == "send_message" and data.get("sender_id", ANA).lower() != ANA:
        return Expect("forbidden")
    if group not in GROUP_NAMES:
        return Expect("group_not_found")
    if event == "send_message":
        first = rig.client_ids.get((group, data.get("client_msg_id")))
        return Expect("ok", effect="duplicate", message_id=first) if first else Expect("ok", effect="store")
    if event in ("edit_message", "delete_message"):
        message_id = data["message_id"].lower()
        message = rig.messages.get(message_id)
        if message is None or message["group_id"] != group:
            return Expect("message_not_found")
        if message["sender_id"] != ANA:
            return Expect("forbidden")
        if event == "edit_message":
            return Expect("message_not_found") if message["deleted"] else Expect("ok", effect="edit", message_id=message_id)
        return Expect("ok", effect="redelete" if message["deleted"] else "delete", message_id=message_id)
    return Expect("ok")


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
    else:  # client_msg_id
        specific = st.one_of(
            texts(70),
            st.sampled_from(["", "c" * 64, "c" * 65, "x\x00", "x\ny", "\u200b", "\u00f1and\u00fa-\u2713",
                             "\ud800", " ", "seed-1"]),
            known(lambda: sorted(cid for _, cid in rig.client_ids), "seed-1"),
        )
    return st.one_of(specific, specific, VALUES)


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
        if SECRET_WORD in json.dumps(ack) and event not in ("join_group", "get_history", "send_message", "edit_message"):
            self.problem("ack leaks message content", call, show(ack))
        if ack["ok"]:
            self._success(event, args[0] if args else None, expect, call, ack)

    def problem(self, what: str, call: str, detail: str = "") -> None:
        self.problems.append(Problem(what, call, detail))

    # - what success looks like, event by event -

    def _success(self, event: str, payload: Any, expect: Expect, call: str, ack: dict[str, Any]) -> None:
        def want(keys: set[str]) -> bool:
            if set(ack) != keys:
                self.problem(f"{event} ack has keys {sorted(ack)}", call, show(ack))
                return False
            return True

        exact = not self.dirty
        group = payload["group_id"].lower() if isinstance(payload, dict) and "group_id" in payload else None
        if event == "list_groups":
            if want({"ok", "groups"}):
                expected = [self._summary(g) for g in (MATHS, PHYSICS)]
                got = ack["groups"]
                if [g.get("id") for g in got] != [MATHS, PHYSICS] or (exact and got != expected and None not in self.read.values()):
                    self.problem("list_groups answers wrong groups or counts", call, f"{show(got)} != {show(expected)}")
        elif event in ("leave_group", "typing"):
            if ack != {"ok": True}:
                self.problem(f"{event} success is not {{ok: true}}", call, show(ack))
        elif event == "join_group":
            if want({"ok", "group", "messages", "has_more", "latest_seq", "latest_rev", "last_read_seq",
                     "unread_count", "online"}):
                if ack["group"] != {"id": group, "name": GROUP_NAMES[group]} or ANA not in ack["online"]:
                    self.problem("join_group names the wrong group or leaves Ana offline", call, show(ack))
                since = payload.get("since_seq")
                page = self._page(group, payload.get("limit") or 50, after=since, before=None)
                self._check_page(call, ack, page, exact)
                if exact and (ack["latest_seq"], ack["latest_rev"]) != (self._latest(group), self._latest_rev(group)):
                    self.problem("join_group latest_seq or latest_rev is wrong", call, show(ack))
                if exact and self.read[group] is not None and (ack["last_read_seq"], ack["unread_count"]) != (
                    self.read[group], self._unread(group, self.read[group])
                ):
                    self.problem("join_group read marker or unread count is wrong", call, show(ack))
        elif event == "get_history":
            if want({"ok", "messages", "has_more"}):
                page = self._page(group, payload.get("limit") or 50,
                                  after=payload.get("after_seq"), before=payload.get("before_seq"))
                self._check_page(call, ack, page, exact)
        elif event == "mark_read":
            if want({"ok", "last_read_seq", "unread_count"}):
                previous = self.read[group]
                if exact:
                    target = min(payload["seq"], self._latest(group))
                    expected = max(previous, target) if previous is not None else None
                    if (expected is not None and ack["last_read_seq"] != expected) or ack["last_read_seq"] < target:
                        self.problem("mark_read moved the marker wrongly", call, f"{show(ack)}, was {previous}")
                    elif ack["unread_count"] != self._unread(group, ack["last_read_seq"]):
                        self.problem("mark_read unread_count is wrong", call, show(ack))
                elif previous is not None and ack["last_read_seq"] < previous:
                    self.problem("mark_read moved the marker back", call, f"{show(ack)}, was {previous}")
                self.read[group] = ack["last_read_seq"]
        elif event == "send_message":
            if want({"ok", "message", "duplicate"}):
                self._sent(call, payload, group, expect, ack)
        elif event in ("edit_message", "delete_message"):
            if want({"ok", "message"}):
                self._changed(event, call, payload, expect, ack["message"])

    def _sent(self, call: str, payload: dict[str, Any], group: str, expect: Expect, ack: dict[str, Any]) -> None:
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
            return
        if (message["content"], message["client_msg_id"], message["deleted"], message["edited_at"]) != (
            payload["content"], payload.get("client_msg_id"), False, None
        ):
            self.problem("sent message does not carry what was sent", call, show(message))
        self._remember(message)
        self.sent.append(message)

    def _changed(self, event: str, call: str, payload: dict[str, Any], expect: Expect, message: Any) -> None:
        if not isinstance(message, dict) or set(message) != MESSAGE_FIELDS:
            self.problem(f"{event} answered a message with the wrong fields", call, show(message))
            return
        before = self.messages.get(message["id"])
        if event == "edit_message":
            good = message["content"] == payload["content"] and isinstance(message["edited_at"], str) and not message["deleted"]
        else:
            good = message["deleted"] is True and message["content"] == ""
        if not good or before is None or message["seq"] != before["seq"] or message["id"] != payload["message_id"].lower():
            self.problem(f"{event} answered the wrong message", call, show(message))
            return
        if expect.effect != "redelete":
            self.changes.append(("message_updated" if event == "edit_message" else "message_deleted", message))
        self._remember(message)

    def _remember(self, message: dict[str, Any]) -> None:
        self.messages[message["id"]] = message
        if message["sender_id"] == ANA and message["client_msg_id"] is not None:
            self.client_ids.setdefault((message["group_id"], message["client_msg_id"]), message["id"])

    # - the model's view of a group -

    def _of(self, group: str) -> list[dict[str, Any]]:
        return sorted((m for m in self.messages.values() if m["group_id"] == group), key=lambda m: m["seq"])

    def _latest(self, group: str) -> int:
        return max((m["seq"] for m in self._of(group)), default=0)

    def _latest_rev(self, group: str) -> int:
        return max((m["rev"] for m in self._of(group)), default=0)

    def _unread(self, group: str, marker: int) -> int:
        return sum(1 for m in self._of(group) if m["sender_id"] != ANA and not m["deleted"] and m["seq"] > marker)

    def _summary(self, group: str) -> dict[str, Any]:
        marker = self.read[group] or 0
        return {"id": group, "name": GROUP_NAMES[group], "latest_seq": self._latest(group),
                "latest_rev": self._latest_rev(group), "unread_count": self._unread(group, marker)}

    def _page(self, group: str, limit: int, *, after: int | None, before: int | None) -> tuple[list, bool]:
        messages = self._of(group)
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
        if event not in ("send_message", "edit_message", "delete_message") or expect.code not in ("ok", None):
            return
        payload = args[0]
        group = payload["group_id"].lower() if verdict("id", payload.get("group_id")) else None
        if event == "send_message" and expect.effect != "duplicate":
            self.unacked_sends.append((group, payload.get("content")))
        elif event != "send_message" and expect.effect != "redelete":
            self.unacked_changes += 1
        if expect.code == "ok" and expect.effect in ("store", "edit", "delete"):
            observer = self.observer[group]
            if expect.effect == "store":
                def arrived() -> Any:
                    return [m for m in observer.events("message")
                            if m["id"] not in self.messages and m["content"] == payload["content"]]
            else:
                kind = "message_updated" if expect.effect == "edit" else "message_deleted"

                def arrived() -> Any:
                    return [m for m in observer.events(kind) if m["id"] == expect.message_id
                            and m != self.messages[expect.message_id]]
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
                self.problem("acknowledged edit/deletion not broadcast as acknowledged", where, show(change))
        if len(changes) - len(acked_changes) > self.unacked_changes:
            self.problem("edits/deletions broadcast that nobody acknowledged or sent", where)
        if not self.dirty and stored != self._of(group):
            self.problem("stored history differs from the acknowledged sends, edits and deletions", where)


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
    bens = await ben.call("send_message", {"group_id": MATHS, "content": f"Ben's {SECRET_WORD}"})
    rig._remember(bens["message"])
    rig.sent.append(bens["message"])
    await rig.exercise("send_message", ({"group_id": MATHS, "content": "Ana again"},))
    assert not rig.problems, report(rig.problems, rig.exchanges)
    return rig


# -- valid payloads, and exactly one thing changed --

def valid_payload(draw: Callable[..., Any], event: str, rig: Rig) -> dict[str, Any]:
    group = draw(st.sampled_from([MATHS, PHYSICS, MATHS.upper()]))
    gid = group.lower()
    latest = rig._latest(gid)
    if event == "list_groups":
        return {}
    if event == "join_group":
        payload: dict[str, Any] = {"group_id": group}
        if draw(st.booleans()):
            payload["since_seq"] = draw(PICK) % (latest + 3)
        if draw(st.booleans()):
            payload["limit"] = draw(st.integers(1, 100))
        return payload
    if event in ("leave_group",):
        return {"group_id": group}
    if event == "send_message":
        payload = {"group_id": group, "content": "m" + draw(texts(40, surrogates=False))}
        cid = draw(st.one_of(st.none(), st.integers(0, 10**9).map(lambda n: f"c-{n}"),
                             known(lambda: sorted(c for g, c in rig.client_ids if g == gid), "c-0")))
        if cid is not None:
            payload["client_msg_id"] = cid
        if draw(st.booleans()):
            payload["sender_id"] = draw(st.sampled_from([ANA, ANA.upper()]))
        return payload
    if event == "get_history":
        payload = {"group_id": group}
        which = draw(st.sampled_from(["latest", "before", "after"]))
        if which == "before":
            payload["before_seq"] = 1 + draw(PICK) % (latest + 2)
        elif which == "after":
            payload["after_seq"] = draw(PICK) % (latest + 2)
        if draw(st.booleans()):
            payload["limit"] = draw(st.integers(1, 100))
        return payload
    if event == "typing":
        return {"group_id": group, "is_typing": draw(st.booleans())}
    if event == "mark_read":
        return {"group_id": group, "seq": draw(st.one_of(PICK.map(lambda i: i % (latest + 4)), st.just(MAX_SAFE)))}
    whose = draw(st.sampled_from(["mine", "mine", "mine", "mine", "someone else's", "elsewhere"]))
    candidates = sorted(
        m["id"] for m in rig.messages.values()
        if {"mine": m["sender_id"] == ANA and m["group_id"] == gid,
            "someone else's": m["sender_id"] != ANA,
            "elsewhere": m["group_id"] != gid}[whose]
    )
    payload = {"group_id": group, "message_id": pick(draw, candidates or [NOWHERE])}
    if event == "edit_message":
        payload["content"] = "e" + draw(texts(40, surrogates=False))
    return payload


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
QUERY_KEYS = st.one_of(st.sampled_from(["limit", "before_seq", "after_seq"] * 3 + [
    "LIMIT", "limit[]", "after_seq ", "token", "access_token", "group_id"]), texts(8))
QUERY_VALUES = st.one_of(
    st.integers(-5, 120).map(str),
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
    params: dict[str, int] = {}
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
        assert (await ana.call("send_message", {"group_id": MATHS, "content": f"{SECRET_WORD} {i}"}))["ok"]
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
        await explore(600, step)
    await watched.settle()
    assert [m["content"] for m in watched.events("message")] == [f"{SECRET_WORD} {i}" for i in range(3)]
    assert len(watched.received) == 3  # HTTP reads broadcast nothing
    assert not problems, report(problems, 600)
    # The inputs reached every documented answer of both routes.
    assert set(statuses) >= {("messages", s) for s in (200, 400, 401, 403, 404)} | {
        ("groups", 200), ("groups", 401)}, statuses


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


def _near(kind: str) -> st.SearchStrategy[Any]:
    """Values of a field's kind, mostly valid, with the odd one of any JSON type."""
    close = {
        "id": ids(), "content": st.one_of(EDGE_CONTENT, texts(8)), "client_msg_id": texts(10),
        "bool": st.booleans(),
    }.get(kind, st.integers(-2, 120))
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
