"""``docs/asyncapi.yaml`` against the server it describes, and its page at ``/docs``.

The AsyncAPI parser accepts the document without a warning. The client events it
lists are the ones the server registers, and the server events the ones the code
emits and a client receives. Every payload schema accepts what the server accepts
and refuses what it refuses with ``invalid_payload``: examples derived from each
schema (every type, every bound and one past it, missing, unknown and ``null``
fields, payloads that are not objects) and a few written by hand are validated
with ``jsonschema`` and sent to a real server by a member of the group, with
real message ids, so only validation decides. The rules JSON Schema cannot say
are listed below (``GAPS``) and must show on the fields the document marks.
Every ack and event a client receives fits its schema. ``/docs`` serves the
page built from the document (``make api-docs``), needing nothing from elsewhere.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import yaml
from aiohttp import web
from jsonschema import Draft7Validator

from cluster.rate_limits import Bucket, RateLimits
from handlers.errors import HTTP_STATUS
from handlers.schemas import SCHEMAS
from server.app import create_app
from server.http import API_DOCS_DIR
from server.keys import SIO
from tests.support.chat import (
    ANA,
    BEN,
    CAROL,
    DAN,
    PHYSICS,
    ChatClient,
    make_settings,
    make_token,
    refused,
    seeded_store,
)

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
API_DIR = ROOT / "docs" / "api"
PAGE = API_DIR / "build" / "index.html"
BUILD_HINT = "run `make api-docs` (npm ci in docs/api, then node build.mjs)"

BIG = "65b0000000000000000000b1"  # Ana, Ben, Carol and CROWD: enough members to mention 51
CROWD = [f"65c00000000000000000{i:04x}" for i in range(60)]
SERVICE = {"Authorization": f"Bearer {make_token('course-platform', role='service')}"}
ASTRAL = "\U0001f600"  # one code point, two UTF-16 units: lengths count code points
MAX_SAFE = 2**53 - 1


# ---------------------------------------------------------------- the document


@functools.cache
def document() -> dict[str, Any]:
    """The document with every local ``$ref`` replaced by what it points to."""
    raw = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target: Any = raw
                for part in node["$ref"].removeprefix("#/").split("/"):
                    target = target[part]
                return resolve(target)
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(raw)


@dataclass(frozen=True)
class Event:
    """A Socket.IO event as the document describes it."""

    name: str
    payload: dict[str, Any]
    replies: tuple[dict[str, Any], ...]  # the ack's schemas: success first, then the error envelope


def documented(action: str) -> dict[str, Event]:
    """The EVENT messages of the ``send`` (client → server) or ``receive`` operations, by event name."""
    found: dict[str, Event] = {}
    for operation in document()["operations"].values():
        if operation["action"] != action:
            continue
        replies = tuple(m["payload"] for m in operation.get("reply", {}).get("messages", ()))
        for message in operation["messages"]:
            if message["x-socketio-packet"] == "EVENT":
                assert message["name"] not in found, f"{message['name']} is documented twice"
                found[message["name"]] = Event(message["name"], message["payload"], replies)
    return found


def client_event(name: str) -> Event:
    events = documented("send")
    assert name in events, f"the document has no send operation for the event {name!r}"
    return events[name]


def schema_named(name: str) -> dict[str, Any]:
    return document()["components"]["schemas"][name]


# ---------------------------------------------------------------- what JSON Schema cannot say

# A known difference: the schema accepts what the server refuses, never the other way.
# Each names the extension that marks it on a field (None: it applies to every field of a type).
GAPS: dict[str, tuple[str | None, str]] = {
    "integer-literal": (None, "1.0 is the number 1, an integer to JSON Schema; the server reads the JSON text, "
                              "where 1.0 is a float, and refuses it"),
    "lone-surrogate": (None, "JSON Schema sees a string as code points, a lone surrogate among them; the server "
                             "refuses text that is not valid Unicode (storage cannot encode it)"),
    "printable": ("x-printable", "'printable' is a set of Unicode categories; \\p{...} classes are not in Python's "
                                 "re, so no pattern means the same to every validator"),
    "ids-ignoring-case": ("x-unique-ignoring-case", "uniqueItems compares strings as written; the server compares "
                                                    "ids lowercased"),
    "rgi-emoji": ("x-rgi-emoji", "the fully-qualified RGI emoji are a list of about 3,700 sequences (the emoji "
                                 "package's data), not a pattern"),
    "words": ("x-words", "words are counted at Unicode word boundaries (UAX #29) and need a letter or digit; "
                         "no JSON Schema keyword counts them"),
}


def expected_gaps(schema: dict[str, Any]) -> set[str]:
    """The gaps an event's examples must show: from its fields' types and extensions."""
    gaps = set()
    for prop in schema.get("properties", {}).values():
        types = _types(prop)
        if "integer" in types:
            gaps.add("integer-literal")
        if "string" in types and not _is_id(prop) and "enum" not in prop:
            gaps.add("lone-surrogate")
        gaps |= {gap for gap, (extension, _) in GAPS.items() if extension and prop.get(extension)}
    return gaps


def _is_id(schema: dict[str, Any]) -> bool:
    return schema.get("pattern") == schema_named("Id")["pattern"]


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


# ---------------------------------------------------------------- a server with a big group


@pytest.fixture
def store():
    store = seeded_store()
    store.add_group(BIG, "Big study group", [ANA, BEN, CAROL, *CROWD])
    return store


@pytest.fixture
def settings():
    off = Bucket(0.0, 0)  # no rate limit: only validation answers here
    return make_settings(rate_limits=RateLimits(send=off, other=off, upload=off, upload_bytes=off))


@dataclass
class Examples:
    """What valid examples refer to: real ids in BIG, and Ana's unused uploads there."""

    ids: dict[str, str]  # field name -> an id that field accepts
    uploads: list[str] = field(default_factory=list)

    def base(self, event: str) -> dict[str, Any]:
        """A payload the server accepts, each field's own id filled in."""
        return {
            "list_groups": {},
            "join_group": {"group_id": BIG},
            "leave_group": {"group_id": BIG},
            "send_message": {"group_id": BIG, "content": "hello"},
            "get_history": {"group_id": BIG},
            "get_changes": {"group_id": BIG, "after_rev": 0},
            "typing": {"group_id": BIG, "is_typing": True},
            "mark_read": {"group_id": BIG, "seq": 1},
            "edit_message": {"group_id": BIG, "message_id": self.ids["message_id"], "content": "edited"},
            "delete_message": {"group_id": BIG, "message_id": self.ids["victim"]},
            "react": {"group_id": BIG, "message_id": self.ids["message_id"], "emoji": "\U0001f44d", "on": True},
            "pin_message": {"group_id": BIG, "message_id": self.ids["message_id"], "pinned": True},
            "accept_answer": {"group_id": BIG, "question_id": self.ids["question_id"],
                              "answer_id": self.ids["answer_id"]},
            "search_messages": {"query": "hello"},
            "refresh_token": {"token": make_token(ANA)},
        }[event]

    def distinct_ids(self, name: str, count: int) -> list[str]:
        """``count`` ids the array field accepts: members to mention, or fresh uploads."""
        if name == "attachments":
            assert len(self.uploads) >= count, "upload more files for the attachments examples"
            taken, self.uploads[:] = self.uploads[:count], self.uploads[count:]
            return taken
        members = [ANA, BEN, CAROL, *CROWD]
        assert count <= len(members)
        return members[:count]


@dataclass
class World:
    """Ana, signed in to a real server, and the examples' ids."""

    url: str
    ana: ChatClient
    examples: Examples

    async def upload(self, count: int) -> None:
        async with aiohttp.ClientSession() as http:
            for i in range(count):
                form = aiohttp.FormData()
                form.add_field("file", io.BytesIO(f"notes {i}\n".encode()), filename=f"notes-{i}.txt")
                async with http.post(f"{self.url}/study-groups/{BIG}/attachments", data=form,
                                     headers={"Authorization": f"Bearer {make_token(ANA)}"}) as resp:
                    answer = await resp.json()
                    assert resp.status == 200, answer
                    self.examples.uploads.append(answer["attachment"]["id"])


async def _send(client: ChatClient, payload: dict[str, Any]) -> str:
    ack = await client.call("send_message", payload)
    assert ack["ok"], ack
    return str(ack["message"]["id"])


@pytest.fixture
async def world(server_url, connect) -> World:
    ana = await connect(ANA)
    message = await _send(ana, {"group_id": BIG, "content": "hello world"})
    victim = await _send(ana, {"group_id": BIG, "content": "to be deleted"})
    question = await _send(ana, {"group_id": BIG, "content": "why?", "kind": "question"})
    answer = await _send(ana, {"group_id": BIG, "content": "because"})
    ids = {
        "group_id": BIG, "message_id": message, "victim": victim, "reply_to": message,
        "question_id": question, "answer_id": answer, "sender_id": ANA,
    }
    return World(server_url, ana, Examples(ids))


# ---------------------------------------------------------------- examples derived from a schema


@dataclass(frozen=True)
class Case:
    what: str
    payload: Any
    field: str | None = None  # the key a refusal's ``details`` must name
    gap: str | None = None  # a GAPS entry: the schema may accept what the server refuses
    expect: bool | None = None  # written by hand: whether the protocol accepts it


NOT_OBJECTS = [("a list", []), ("a string", "group"), ("a number", 1), ("true", True), ("null", None)]
ANY_TYPE = [("a string", "x"), ("an integer", 7), ("a float", 1.5), ("true", True), ("false", False),
            ("a list", []), ("an object", {}), ("null", None)]
# What long strings are made of: a query's must stay one word, and a token's 8,193
# characters must fit a frame (an astral character is 12 bytes of escaped JSON).
FILLER = {"query": "a", "token": "a"}
PRINTABLE_NOT = ["a\x00b", "a\nb", "\u200b", "\ue000", "a\u2028b"]  # control, format, private use, separator
EMOJI = ["\U0001f44d", "\U0001f44d\U0001f3fd", "\U0001f1ea\U0001f1f8", "1\ufe0f\u20e3",
         "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\u2764\ufe0f"]  # skin tone, flag, keycap, ZWJ, VS16
NOT_EMOJI = ["a", "\U0001f44d\U0001f44d", "\u2764", "\U0001f3fb", " \U0001f44d"]  # text, two, unqualified, modifier
WORDS_NOT = ["!!!", " ".join(f"w{i}" for i in range(11)), "\U0001f44d"]  # no letter or digit; 11 words


def field_samples(name: str, prop: dict[str, Any], examples: Examples) -> list[tuple[str, Any, str | None]]:
    """(what, value, gap) for one field: every JSON type, then each constraint at its bound and past it."""
    types = _types(prop)
    text_gap = _text_gap(prop)
    samples: list[tuple[str, Any, str | None]] = [
        (what, value, text_gap if isinstance(value, str) else None) for what, value in ANY_TYPE
    ]
    add = samples.append
    if "integer" in types:
        low, high = prop.get("minimum", 0), prop.get("maximum", MAX_SAFE)
        add((f"the minimum {low}", low, None))
        add((f"minimum - 1 = {low - 1}", low - 1, None))
        add((f"the maximum {high}", high, None))
        add((f"maximum + 1 = {high + 1}", high + 1, None))
        add((f"{float(low)!r}, an integer written as a float", float(low), "integer-literal"))
        add(("a numeric string", str(low), None))
    if "boolean" in types:
        samples += [("1", 1, None), ("0", 0, None), ('"true"', "true", None)]
    if "string" in types:
        samples += string_samples(name, prop, examples)
    if "array" in types:
        samples += array_samples(name, prop, examples)
    return samples


def string_samples(name: str, prop: dict[str, Any], examples: Examples) -> list[tuple[str, Any, str | None]]:
    samples: list[tuple[str, Any, str | None]] = []
    add = samples.append
    if "enum" in prop:
        choices = [c for c in prop["enum"] if c is not None]
        samples += [(f"{c!r}", c, None) for c in choices]
        samples += [("not one of the choices", "nope", None), ("a choice in capitals", choices[0].upper(), None)]
        return samples
    if _is_id(prop):
        good = examples.ids[name]
        ids = [
            ("an id", good), ("an id in capitals", good.upper()), ("23 hex digits", good[:-1]),
            ("25 hex digits", good + "0"), ("a letter that is not hex", "g" + good[1:]),
            ("an id and a newline", good + "\n"), ("an id in full-width digits", "\uff10" * 24),
            ("lone surrogates", "\ud800" * 24),
        ]
        return [(what, value, None) for what, value in ids]
    gap = _text_gap(prop)
    filler = FILLER.get(name, ASTRAL)
    low, high = prop.get("minLength", 0), prop.get("maxLength")
    add(("empty", "", gap))
    if low > 1:
        add((f"{low} code points", filler * low, gap))
    if low:
        add((f"{low - 1} code points", filler * (low - 1), gap))
    if high is not None:
        add((f"{high} code points (astral)" if filler == ASTRAL else f"{high} code points", filler * high, gap))
        add((f"{high + 1} code points", filler * (high + 1), gap))
    add(("a lone surrogate", "\ud83d" if prop.get("x-rgi-emoji") else "ok\ud800", "lone-surrogate"))
    add(("a surrogate pair, escaped in JSON", ASTRAL, gap))
    if prop.get("x-printable"):
        samples += [(f"not printable: {v!r}", v, "printable") for v in PRINTABLE_NOT]
        add(("printable with a space", "a b", None))
    if prop.get("x-rgi-emoji"):
        samples += [(f"an emoji: {v!r}", v, None) for v in EMOJI]
        samples += [(f"not one emoji: {v!r}", v, "rgi-emoji") for v in NOT_EMOJI]
    if prop.get("x-words"):
        most = prop["x-words"]["maximum"]
        add((f"{most} words", " ".join(f"w{i}" for i in range(most)), None))
        samples += [(f"not 1 to {most} words: {v!r}", v, "words") for v in WORDS_NOT]
    return samples


def _text_gap(prop: dict[str, Any]) -> str | None:
    """The gap a field's generic text samples may show: "x" or a run of one character is not an
    emoji (``x-rgi-emoji``), and an emoji alone holds no word (``x-words``)."""
    if prop.get("x-rgi-emoji"):
        return "rgi-emoji"
    return "words" if prop.get("x-words") else None


def array_samples(name: str, prop: dict[str, Any], examples: Examples) -> list[tuple[str, Any, str | None]]:
    most = prop["maxItems"]
    samples: list[tuple[str, Any, str | None]] = [
        ("an empty list", [], None),
        ("one id", examples.distinct_ids(name, 1), None),
        (f"{most} ids", examples.distinct_ids(name, most), None),
        (f"{most + 1} ids", examples.distinct_ids(name, most + 1), None),
        ("a number among the ids", [7], None),
        ("a string that is not an id", ["abc"], None),
    ]
    one = examples.distinct_ids(name, 1)[0]
    samples.append(("the same id twice", [one, one], None))
    if prop.get("x-unique-ignoring-case"):
        again = examples.distinct_ids(name, 1)[0]
        samples.append(("one id twice, in two cases", [again.upper(), again.lower()], "ids-ignoring-case"))
    return samples


def generated_cases(event: str, examples: Examples) -> list[Case]:
    schema = client_event(event).payload
    base = examples.base(event)
    cases = [Case("the valid payload", base)]
    cases += [Case(f"a payload that is {what}", value, field="_payload") for what, value in NOT_OBJECTS]
    cases.append(Case("an unknown field", {**base, "colour": "red"}, field="colour"))
    required = set(schema.get("required", ()))
    for name, prop in schema["properties"].items():
        if name in required:
            cases.append(Case(f"{name} missing", {k: v for k, v in base.items() if k != name}, field=name))
        for what, value, gap in field_samples(name, prop, examples):
            cases.append(Case(f"{name}: {what}", {**base, name: value}, field=name, gap=gap))
    return cases


def hand_written(event: str, examples: Examples) -> list[Case]:
    """Examples the protocol decides (``expect``), whatever the schema says."""
    base = examples.base(event)

    def case(what: str, changes: dict[str, Any], expect: bool, field: str | None = None,
             gap: str | None = None) -> Case:
        return Case(what, {**base, **changes}, field=field, gap=gap, expect=expect)

    blank = [case(f"content of white space only: {c!r}", {"content": c}, False, "content")
             for c in (" ", "\t\n", "\u00a0", "\u3000", "\u2028", "\u200a")]
    not_blank = [case(f"content that is not white space: {c!r}", {"content": c}, True)
                 for c in ("\u200b", "\ufeff", "\u180e", ".", ASTRAL * 4000)]
    written: dict[str, Callable[[], list[Case]]] = {
        "list_groups": lambda: [
            Case("null, as no payload", None, expect=True),
            Case("a list", [], field="_payload", expect=False),
        ],
        "join_group": lambda: [
            case("since_seq and since_rev", {"since_seq": 1, "since_rev": 1}, False, "since_seq"),
            case("since_seq, and since_rev null", {"since_seq": 1, "since_rev": None}, True),
            case("since_rev 0", {"since_rev": 0}, True),
            case("limit true", {"limit": True}, False, "limit"),
        ],
        "leave_group": lambda: [case("an id in capitals", {"group_id": BIG.upper()}, True)],
        "send_message": lambda: [
            *blank, *not_blank,
            case("blank content with a file", {"content": " ", "attachments": examples.distinct_ids("attachments", 1)}, True),
            case("empty content with a file", {"content": "", "attachments": examples.distinct_ids("attachments", 1)}, True),
            case("blank content, no files", {"content": " ", "attachments": []}, False, "content"),
            case("blank content, attachments null", {"content": " ", "attachments": None}, False, "content"),
            case("kind system (the platform's)", {"kind": "system"}, False, "kind"),
            case("a tab in client_msg_id", {"client_msg_id": "a\tb"}, False, "client_msg_id", gap="printable"),
            case("65 code points of client_msg_id", {"client_msg_id": "x" * 65}, False, "client_msg_id"),
            case("mentions in two cases", {"mentions": [BEN.upper(), BEN]}, False, "mentions",
                 gap="ids-ignoring-case"),
            case("mentions null", {"mentions": None}, True),
            case("content 4,000 code points outside the BMP", {"content": ASTRAL * 4000}, True),
            case("content 4,001 code points", {"content": "a" * 4001}, False, "content"),
        ],
        "get_history": lambda: [
            case("before_seq and after_seq", {"before_seq": 5, "after_seq": 1}, False, "before_seq"),
            case("before_seq, and after_seq null", {"before_seq": 5, "after_seq": None}, True),
            case("before_seq 0", {"before_seq": 0}, False, "before_seq"),
            case("filter pinned", {"filter": "pinned"}, True),
            case("filter Pinned", {"filter": "Pinned"}, False, "filter"),
        ],
        "get_changes": lambda: [
            case("after_rev 2^53 - 1", {"after_rev": MAX_SAFE}, True),
            case("after_rev 2^53", {"after_rev": MAX_SAFE + 1}, False, "after_rev"),
            case("after_rev null", {"after_rev": None}, False, "after_rev"),
        ],
        "typing": lambda: [
            case("is_typing 1", {"is_typing": 1}, False, "is_typing"),
            case("is_typing false", {"is_typing": False}, True),
        ],
        "mark_read": lambda: [case("seq true", {"seq": True}, False, "seq"), case("seq 0", {"seq": 0}, True)],
        "edit_message": lambda: [*blank, *not_blank, case("content empty", {"content": ""}, False, "content")],
        "delete_message": lambda: [
            case("a message id in capitals", {"message_id": examples.ids["victim"].upper()}, True),
        ],
        "react": lambda: [
            case("a red heart with its variation selector", {"emoji": "\u2764\ufe0f"}, True),
            case("a red heart without it", {"emoji": "\u2764"}, False, "emoji", gap="rgi-emoji"),
            case("on as a string", {"on": "true"}, False, "on"),
        ],
        "pin_message": lambda: [case("pinned null", {"pinned": None}, False, "pinned")],
        "accept_answer": lambda: [
            case("answer_id null takes the acceptance back", {"answer_id": None}, True),
            case("question_id null", {"question_id": None}, False, "question_id"),
        ],
        "search_messages": lambda: [
            case("an accented query", {"query": "resolvi\u00f3"}, True),
            case("white space only", {"query": "   "}, False, "query", gap="words"),
            case("201 code points", {"query": "a" * 201}, False, "query"),
        ],
        "refresh_token": lambda: [
            case("an empty token", {"token": ""}, False, "token"),
            case("a token that does not verify", {"token": "not.a.jwt"}, True),
        ],
    }
    return written[event]()


# ---------------------------------------------------------------- the document itself


def test_the_asyncapi_parser_accepts_the_document_without_warnings():
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed (Debian: apt-get install nodejs npm); then {BUILD_HINT}")
    if not (API_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"docs/api has no node_modules: {BUILD_HINT}")
    run = subprocess.run([node, str(API_DIR / "validate.mjs")], capture_output=True, text=True, timeout=120,
                         check=False)
    report = json.loads(run.stdout)
    problems = [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]
    assert problems == [], json.dumps(problems, indent=2)
    assert run.returncode == 0 and report["parsed"], run.stderr
    assert report["document"] == str(DOCUMENT)


def test_every_example_in_the_document_fits_its_schema():
    components = document()["components"]
    checked = 0
    for message in components["messages"].values():
        for example in message.get("examples", ()):
            Draft7Validator(message["payload"]).validate(example["payload"])
            checked += 1
    for schema in components["schemas"].values():
        for example in schema.get("examples", ()):
            Draft7Validator(schema).validate(example)
            checked += 1
    assert checked >= 20


def test_the_client_events_are_the_ones_the_server_registers(server):
    registered = set(server.app[SIO].handlers["/"]) - {"connect", "disconnect", "*"}
    assert registered == set(SCHEMAS)  # every registered event validates its payload
    assert set(documented("send")) == registered
    for name, event in documented("send").items():
        # Every ack is a success envelope or the one error envelope.
        assert [reply["properties"]["ok"]["const"] for reply in event.replies] == [True, False], name
        assert event.replies[-1] == schema_named("ErrorAck"), name


def emitted_in_code() -> set[str]:
    """Every event name the code hands to something that emits: ``emit``, ``tell``,
    ``_updated`` (literal arguments and their ``event`` defaults), and
    what ``_broadcast_event`` chooses among (the queue's gap fill)."""
    emitters = {"emit", "tell", "_updated"}
    names: set[str] = set()
    for package in ("server", "handlers", "realtime", "cluster"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                    if called in emitters:
                        names |= {a.value for a in node.args[:2] if isinstance(a, ast.Constant)
                                  and isinstance(a.value, str)}
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if node.name in emitters:
                        params = node.args.args[len(node.args.args) - len(node.args.defaults):]
                        names |= {d.value for p, d in zip(params, node.args.defaults)
                                  if p.arg == "event" and isinstance(d, ast.Constant)}
                    if node.name == "_broadcast_event":
                        names |= {name for r in ast.walk(node) if isinstance(r, ast.Return)
                                  for name in _chosen(r.value)}
    return names


def _chosen(expr: ast.expr | None) -> set[str]:
    """The strings an expression evaluates to: a literal, or either branch of ``a if c else b``."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _chosen(expr.body) | _chosen(expr.orelse)
    return set()


def test_the_server_events_are_the_ones_the_code_emits():
    assert set(documented("receive")) == emitted_in_code()


async def test_every_server_event_reaches_a_client_as_documented(server_url, connect, store):
    events = documented("receive")
    soon = await connect(ANA, token=make_token(ANA, ttl=30))  # session_expiring at once
    ana, ben, dan = await connect(ANA), await connect(BEN), await connect(DAN)
    assert (await ana.call("join_group", {"group_id": BIG}))["ok"]
    assert (await ben.call("join_group", {"group_id": BIG}))["ok"]  # presence, to Ana
    assert (await ben.call("typing", {"group_id": BIG, "is_typing": True}))["ok"]
    sent = await ana.call("send_message", {"group_id": BIG, "content": "hello", "mentions": [BEN]})
    message_id = sent["message"]["id"]
    assert (await ana.call("react", {"group_id": BIG, "message_id": message_id, "emoji": "\U0001f44d",
                                     "on": True}))["ok"]
    assert (await ana.call("pin_message", {"group_id": BIG, "message_id": message_id, "pinned": True}))["ok"]
    assert (await ana.call("delete_message", {"group_id": BIG, "message_id": message_id}))["ok"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/study-groups/{BIG}/messages", json={"content": "maintenance"},
                             headers=SERVICE) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.2)  # Dan's groups (none) are read once his connection opens
        store.set_members(BIG, [ANA, CAROL, *CROWD])  # Ben leaves BIG: membership_revoked, presence
        store.set_members(PHYSICS, [ANA, CAROL, DAN])  # Dan joins Physics: group_added
        for group in (BIG, PHYSICS):
            async with http.post(f"{server_url}/study-groups/{group}/membership-changed", headers=SERVICE) as resp:
                assert resp.status == 200, await resp.text()
    await ben.wait_event("membership_revoked")
    await dan.wait_event("group_added")
    await soon.wait_event("session_expiring")
    await ana.wait_for(lambda: [p for p in ana.events("presence") if not p["online"]])
    await ana.wait_for(lambda: len(ana.events("message")) >= 2 and ana.events("message_deleted"))

    received = [item for client in (soon, ana, ben, dan) for item in client.received]
    assert {name for name, _ in received} == set(events)
    for name, payload in received:
        Draft7Validator(events[name].payload).validate(payload)


async def test_connect_error_fits_its_schema(aiohttp_server):
    connect = next(op for op in document()["operations"].values() if op["messages"][0]["name"] == "connect")
    refusal = next(m for m in connect["reply"]["messages"] if m["x-socketio-packet"] == "CONNECT_ERROR")
    schema = Draft7Validator(refusal["payload"])
    app = create_app(make_settings(max_connections_per_user=1), storage=seeded_store())
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    bad = await refused(url, auth={"token": "not.a.jwt"})
    schema.validate(bad)
    assert bad["data"]["code"] == "unauthorized"
    first = socketio.AsyncClient(reconnection=False)
    await first.connect(url, auth={"token": make_token(ANA)}, transports=["websocket"], wait_timeout=10)
    try:
        crowded = await refused(url, auth={"token": make_token(ANA)})
    finally:
        await first.disconnect()
    schema.validate(crowded)
    assert crowded["data"]["code"] == "too_many_connections"


def test_the_error_codes_are_the_servers():
    assert set(schema_named("ErrorCode")["enum"]) == set(HTTP_STATUS)


def test_the_http_routes_are_the_servers():
    app = create_app(make_settings(), storage=seeded_store())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        # Static files (/static/...) and the Socket.IO endpoint are not routes of their own here.
        if route.method not in ("HEAD", "OPTIONS") and isinstance(route.resource, web.Resource)
        and route.resource.canonical != "/socket.io/"
    }
    listed = {(route["method"], route["path"]) for route in document()["x-http-routes"]}
    assert listed == served


def test_not_blank_is_exactly_what_the_server_strips():
    pattern = schema_named("NotBlank")["pattern"]
    assert client_event("edit_message").payload["properties"]["content"]["pattern"] == pattern
    compiled = re.compile(pattern)
    differ = [hex(c) for c in range(sys.maxunicode + 1)
              if not 0xD800 <= c <= 0xDFFF and bool(compiled.search(chr(c))) != bool(chr(c).strip())]
    assert differ == []


# ---------------------------------------------------------------- payloads: the schema and the server agree


def ack_problem(event: Event, ack: Any) -> str | None:
    """Why an ack does not fit the operation's reply schemas (success or error), or None."""
    if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
        return f"not an ack envelope: {ack!r}"
    schema = event.replies[0] if ack["ok"] else event.replies[-1]
    errors = sorted(Draft7Validator(schema).iter_errors(ack), key=lambda e: list(e.path))
    return "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors) or None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
async def test_the_payload_schema_refuses_what_the_server_refuses(name, world):
    event = client_event(name)
    validator = Draft7Validator(event.payload)
    if name == "send_message":
        await world.upload(30)
    cases = [*generated_cases(name, world.examples), *hand_written(name, world.examples)]
    disagreements: list[str] = []
    bad_acks: list[str] = []
    exercised: set[str] = set()
    answers = {True: 0, False: 0}
    for case in cases:
        schema_ok = validator.is_valid(case.payload)
        ack = await world.ana.sio.call(name, (case.payload,), timeout=10)
        if (problem := ack_problem(event, ack)) is not None:
            bad_acks.append(f"{case.what}: {problem}")
            continue
        server_ok = ack["ok"] or ack["error"]["code"] != "invalid_payload"
        answers[server_ok] += 1
        if case.gap is not None:
            assert case.gap in GAPS, case.gap
            extension = GAPS[case.gap][0]
            if extension and case.field:
                assert event.payload["properties"][case.field].get(extension), \
                    f"{name}.{case.field}: the document should mark it {extension}"
        if case.expect is not None and server_ok != case.expect:
            disagreements.append(f"{case.what}: the server {'accepts' if server_ok else 'refuses'} it")
        if schema_ok != server_ok:
            if case.gap is not None and schema_ok:
                exercised.add(case.gap)
            else:
                schema_says = "accepts" if schema_ok else "refuses"
                server_says = "accepts" if server_ok else "refuses"
                disagreements.append(f"{case.what}: the schema {schema_says}, the server {server_says} ({ack})")
        elif not server_ok and case.field is not None and case.field not in ack["error"].get("details", {}):
            disagreements.append(f"{case.what}: refused, but details do not name {case.field!r}: {ack}")
    assert bad_acks == [], "\n".join(bad_acks)
    assert disagreements == [], "\n".join(disagreements)
    assert exercised == expected_gaps(event.payload), "known gaps the examples should have shown, or shown unmarked"
    assert answers[True] >= 3 and answers[False] >= 10, answers

    # No payload, and two, are refused the same way (list_groups alone may go without).
    ack = await world.ana.sio.call(name, timeout=10)
    assert ack_problem(event, ack) is None
    assert (ack["ok"] or ack["error"]["code"] != "invalid_payload") is (name == "list_groups"), ack
    two = await world.ana.sio.call(name, (world.examples.base(name), {}), timeout=10)
    assert ack_problem(event, two) is None
    assert not two["ok"] and "_payload" in two["error"]["details"], two


# ---------------------------------------------------------------- the page at /docs


class _Links(HTMLParser):
    """Every URL the page would load or link to, and its headings."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "poster", "data", "srcset", "xlink:href") and value:
                self.urls.append((tag, name, value))

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _built_page() -> str:
    if not PAGE.is_file():
        pytest.fail(f"{PAGE.relative_to(ROOT)} is missing: {BUILD_HINT}")
    if PAGE.stat().st_mtime < DOCUMENT.stat().st_mtime:
        pytest.fail(f"{PAGE.relative_to(ROOT)} is older than docs/asyncapi.yaml: {BUILD_HINT}")
    return PAGE.read_text(encoding="utf-8")


async def test_docs_serves_the_page_built_from_the_document(server_url):
    built = _built_page()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/docs", headers={"Accept-Encoding": "identity"}) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        async with http.get(f"{server_url}/docs/", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200 and resp.headers.get("Content-Encoding") == "gzip"
            assert await resp.text() == page
        for missing in ("/docs/nothing.js", "/docs/.hidden", "/docs/index.html.missing"):
            async with http.get(f"{server_url}{missing}") as resp:
                assert resp.status == 404, missing
    assert page == built

    parsed = _Links()
    parsed.feed(page)
    html_tag = next(attrs for tag, attrs in parsed.tags if tag == "html")
    assert html_tag.get("lang") == "en"
    assert re.search(r"<title>[^<]*studychat chat protocol", page)
    assert {tag for tag, _ in parsed.tags} >= {"h1", "h2", "h3", "main"}
    names = set(documented("send")) | set(documented("receive"))
    assert [name for name in sorted(names) if name not in page] == []

    # Nothing from elsewhere: no URL with a scheme or host (but `data:`, which loads nothing), no
    # imported style sheet.
    elsewhere = [u for u in parsed.urls
                 if re.match(r"\s*(?:[a-z][a-z0-9+.-]*:|//)", u[2], re.I) and not u[2].startswith("data:")]
    assert elsewhere == []
    assert not [s for s in parsed.styles if re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", s)]
    assert [tag for tag, attrs in parsed.tags if tag in ("script", "link", "iframe", "img") and
            (attrs.get("src") or attrs.get("href") or "data:").split(":")[0] != "data"] == []


async def test_docs_without_a_build_says_how_to_make_one(aiohttp_server, tmp_path):
    app = create_app(make_settings(), storage=seeded_store())
    app[API_DOCS_DIR] = tmp_path
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        for path in ("/docs", "/docs/"):
            async with http.get(server.make_url(path)) as resp:
                assert resp.status == 404
                assert resp.content_type == "text/plain"
                assert "make api-docs" in await resp.text()


def test_the_generated_cases_cover_every_field_and_gap():
    """Without a server: each documented field gets examples, and each gap is reached by some event."""
    examples = Examples({
        "group_id": BIG, "message_id": CROWD[0], "victim": CROWD[1], "reply_to": CROWD[0],
        "question_id": CROWD[2], "answer_id": CROWD[3], "sender_id": ANA,
    })
    reached: set[str] = set()
    for name in sorted(SCHEMAS):
        examples.uploads[:] = list(CROWD)
        payload = client_event(name).payload
        cases = generated_cases(name, examples)
        fields = {case.field for case in cases}
        assert set(payload["properties"]) <= fields, name
        reached |= expected_gaps(payload)
        assert {case.gap for case in cases if case.gap} >= expected_gaps(payload), name
    assert reached == set(GAPS)
