"""The server against the official JavaScript client, ``socket.io-client`` v4 on Node.

``tests/js/scenarios.mjs`` drives real clients over the ``websocket`` and
``polling`` transports and reports what it observed as JSON; the assertions
live here. Every test gets a fresh ``python -m server --demo`` subprocess, so
the demo data (three seeded messages in Calculus I, none in Organic
Chemistry) is exactly as seeded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.chat import ANA as MATHS_ANA
from tests.support.chat import BEN, CAROL, MATHS, MESSAGE_FIELDS, make_token
from tests.support.ports import free_port
from tests.test_multinode import seeded_db, start_nodes  # fixtures

# Generous limits that only keep a silent server from hanging the run.
pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = Path(__file__).resolve().parent / "js"
SCENARIOS = JS_DIR / "scenarios.mjs"
SCENARIO_TIMEOUT_S = 200
STARTUP_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10

ANA, JUAN, MEI, OMAR, LUCIA = (f"64b00000000000000000000{i}" for i in range(1, 6))
USERS = {"ana": ANA, "juan": JUAN, "mei": MEI, "omar": OMAR, "lucia": LUCIA}
NAMES = {
    ANA: "Ana García",
    JUAN: "Juan Pérez",
    MEI: "Mei Chen",
    OMAR: "Omar Haddad",
    LUCIA: "Lucía Fernández",
}
CALCULUS = "64b0000000000000000000a1"
CHEMISTRY = "64b0000000000000000000a2"
SEEDED = [  # Calculus I, seq 1..3
    (ANA, "Hola a todos! Problem set 3 is due Friday."),
    (MEI, "Does anyone have notes on the chain rule lecture?"),
    (JUAN, "I do, I'll share them after class."),
]

HEX_ID = re.compile(r"[0-9a-f]{24}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

TRANSPORTS = ["websocket", "polling"]
# Two-client scenarios run both ways round, so each transport sends and receives.
PAIRS = [
    pytest.param({"ana": "websocket", "juan": "polling"}, id="ana-websocket-juan-polling"),
    pytest.param({"ana": "polling", "juan": "websocket"}, id="ana-polling-juan-websocket"),
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with ``socket.io-client`` installed from the lock file."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.fail(
            "these tests need Node.js and npm on PATH (node: %s, npm: %s); install Node 18+ "
            "or deselect them with -m 'not node'" % (node_bin, npm_bin),
            pytrace=False,
        )
    if not (JS_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        done = subprocess.run(
            [npm_bin, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR, capture_output=True, text=True, encoding="utf-8", timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci` in {JS_DIR} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
    return node_bin


class ServerProcess:
    """``python -m server`` in a subprocess on a free port, its output in a log file."""

    def __init__(self, log_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"the server did not answer /healthz within {STARTUP_TIMEOUT_S} s:\n{self.log()}",
                    pytrace=False)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # Graceful shutdown is not what these tests check; don't let it stall the suite.
                print(f"server still running {STOP_TIMEOUT_S} s after SIGTERM; killed")
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _serve(tmp_path: Path, args: list[str], env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "server.log", args, env)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()
        # Shown by pytest only when the test failed.
        print(f"--- server log ({server.log_path}) ---\n{server.log_path.read_text(errors='replace')}")


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path, ["--demo"], {})


# A server with a key the test knows, to sign tokens the demo cannot (expired ones).
JWT_SECRET = "js-client-tests-secret-" + "k" * 48


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"MONGODB_URI": "memory://", "JWT_SECRET": JWT_SECRET}
    for name in ("JWT_PUBLIC_KEY", "JWT_ALGORITHMS", "JWT_ISSUER", "JWT_AUDIENCE", "REDIS_URL"):
        env[name] = ""  # empty counts as unset
    yield from _serve(tmp_path, [], env)


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


@pytest.fixture
def tokens(demo_server: ServerProcess) -> dict[str, str]:
    """A demo sign-in token for each demo user, by first name."""
    out = {}
    for name, user_id in USERS.items():
        answer = _post_json(f"{demo_server.url}/demo/token", {"user_id": user_id})
        assert answer["ok"] is True, answer
        out[name] = answer["token"]
    return out


def run_scenario(node: str, server: ServerProcess, scenario: str, **config: Any) -> dict[str, Any]:
    """Run one scenario of scenarios.mjs and return what it observed.

    Also holds for every scenario: each ack was answered, none with ``internal``.
    """
    try:
        done = subprocess.run(
            [node, str(SCENARIOS), server.url, scenario],
            cwd=JS_DIR, input=json.dumps(config), capture_output=True, text=True, encoding="utf-8",
            timeout=SCENARIO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scenario {scenario} did not finish in {SCENARIO_TIMEOUT_S} s:\n{exc.stderr}", pytrace=False)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"scenario {scenario} printed no report (exit {done.returncode}):\n"
                    f"stdout: {done.stdout}\nstderr: {done.stderr}", pytrace=False)
    if report["fatal"] or done.returncode != 0:
        pytest.fail(f"scenario {scenario} stopped: {report['fatal']}\nstderr: {done.stderr}", pytrace=False)
    if report["waits_timed_out"]:
        # Shown with the failure that a missing event causes below.
        print(f"events scenario {scenario} waited for and never got: {report['waits_timed_out']}")
    unanswered = [c for c in report["calls"] if c["outcome"] == "timeout"]
    assert unanswered == [], f"acks the server never answered: {unanswered}"
    broken = [c for c in report["calls"] if c["outcome"] in ("internal", "malformed")]
    assert broken == [], f"acks answered with `internal` or without the envelope: {broken}"
    return report["result"]


# ---------------------------------------------------------------- shape helpers


def assert_message(message: Any, *, group_id: str, sender_id: str, seq: int | None = None,
                   content: str | None = None, client_msg_id: str | None = None) -> None:
    """``message`` is a live contract message object with these values."""
    assert isinstance(message, dict), message
    assert MESSAGE_FIELDS - set(message) == set(), f"missing fields in {message}"
    assert message["type"] == "message"
    assert HEX_ID.fullmatch(message["id"]), message
    assert isinstance(message["seq"], int) and not isinstance(message["seq"], bool)
    if seq is not None:
        assert message["seq"] == seq, message
    assert message["group_id"] == group_id
    assert message["sender_id"] == sender_id
    assert message["sender"] == message["sender_name"] == NAMES[sender_id]
    assert isinstance(message["content"], str)
    if content is not None:
        assert message["content"] == content
    assert TIMESTAMP.fullmatch(message["timestamp"]), message["timestamp"]
    assert message["client_msg_id"] == client_msg_id
    assert message["edited_at"] is None
    assert message["deleted"] is False


def refusal_problem(ack: Any, code: str, field: str | None = None) -> str | None:
    """Why ``ack`` is not the documented refusal ``code`` (None when it is)."""
    if not isinstance(ack, dict) or ack.get("ok") is not False:
        return f"expected ok: false, got {ack!r}"
    error = ack.get("error")
    if not isinstance(error, dict) or error.get("code") != code:
        return f"expected code {code!r}, got {error!r}"
    if not isinstance(error.get("message"), str) or not error["message"]:
        return f"error.message must be human text, got {error!r}"
    if code == "invalid_payload":
        details = error.get("details")
        if not isinstance(details, dict) or not details:
            return f"invalid_payload needs details naming the fields, got {error!r}"
        if not all(isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in details.values()):
            return f"details must map field -> list of messages, got {details!r}"
        if field is not None and field not in details:
            return f"details should name {field!r}, got {details!r}"
    return None


def assert_refused(ack: Any, code: str, field: str | None = None) -> None:
    problem = refusal_problem(ack, code, field)
    assert problem is None, problem


def seqs(page: dict[str, Any]) -> list[int]:
    return [m["seq"] for m in page["messages"]]


# ---------------------------------------------------------------- handshake


ANA_GROUPS = [
    {"id": CALCULUS, "name": "Calculus I", "latest_seq": 3, "latest_rev": 3, "unread_count": 2, "mention_count": 0, "open_questions": 0},
    {"id": CHEMISTRY, "name": "Organic Chemistry", "latest_seq": 0, "latest_rev": 0, "unread_count": 0, "mention_count": 0, "open_questions": 0},
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_auth_token_connects_and_lists_groups(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "connect", transport=transport,
                        options={"auth": {"token": tokens["ana"]}})
    assert seen["outcome"] == "connected", seen
    assert seen["transport"] == transport
    assert seen["list_groups"] == {"ok": True, "groups": ANA_GROUPS}
    assert seen["list_groups_with_empty_object"] == {"ok": True, "groups": ANA_GROUPS}


def test_a_default_client_upgrades_from_polling_to_websocket(node, demo_server, tokens):
    """What browsers do: connect over polling, probe, then move to websocket."""
    seen = run_scenario(node, demo_server, "upgrade", transport="default", tokens=tokens)
    assert seen["upgraded"] is True  # often done before the Socket.IO connect is answered
    assert seen["transport_after"] == "websocket"
    assert seen["join"]["ok"] is True
    assert seen["sent"]["ok"] is True
    assert seen["echo"] == seen["sent"]["message"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bearer_header_connects(node, demo_server, tokens, transport):
    """Non-browser clients may send ``Authorization: Bearer`` instead of ``auth``."""
    seen = run_scenario(node, demo_server, "connect", transport=transport,
                        options={"extraHeaders": {"Authorization": f"Bearer {tokens['ana']}"}})
    assert seen["outcome"] == "connected", seen
    assert seen["transport"] == transport
    assert seen["list_groups"] == {"ok": True, "groups": ANA_GROUPS}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(sub: str = ANA, ttl: int = 3600) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl}


def _tampered(token: str) -> str:
    """Ana's real token with the subject changed to Juan's, signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join([header, _b64({**claims, "sub": JUAN}), signature])


REFUSED_HANDSHAKES: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "no-auth": lambda t: {},
    "empty-auth": lambda t: {"auth": {}},
    "empty-token": lambda t: {"auth": {"token": ""}},
    "token-not-a-string": lambda t: {"auth": {"token": 12345}},
    "garbage-token": lambda t: {"auth": {"token": "not-a-jwt"}},
    "forged-other-key": lambda t: {"auth": {"token": jwt.encode(_claims(), "x" * 64, algorithm="HS256")}},
    "forged-tampered-sub": lambda t: {"auth": {"token": _tampered(t["ana"])}},
    "forged-alg-none": lambda t: {"auth": {"token": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."}},
    "token-in-query-only": lambda t: {"query": {"token": t["ana"]}},
    "bearer-forged": lambda t: {"extraHeaders": {"Authorization": "Bearer " + _tampered(t["ana"])}},
}


def assert_unauthorized(seen: dict[str, Any]) -> None:
    """The client got ``connect_error`` with ``err.data`` exactly ``{code: unauthorized, message}``."""
    assert seen["outcome"] == "connect_error", f"expected connect_error, got {seen}"
    error = seen["error"]
    assert error["is_error"] is True
    assert error["message_type"] == "string" and error["message"], error
    data = error["data"]
    assert isinstance(data, dict), f"err.data should be {{code, message}}, got {data!r}"
    assert set(data) == {"code", "message"}, data
    assert data["code"] == "unauthorized"
    assert isinstance(data["message"], str) and data["message"]
    assert seen["connected"] is False


@pytest.mark.parametrize("case", list(REFUSED_HANDSHAKES))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_handshake(node, demo_server, tokens, transport, case):
    options = REFUSED_HANDSHAKES[case](tokens)
    seen = run_scenario(node, demo_server, "connect", transport=transport, options=options)
    assert_unauthorized(seen)


KEYED_REFUSALS = {
    "expired": lambda: jwt.encode(_claims(ttl=-120), JWT_SECRET, algorithm="HS256"),
    "sub-not-an-id": lambda: jwt.encode(_claims(sub="ana"), JWT_SECRET, algorithm="HS256"),
    "no-sub": lambda: jwt.encode({"exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("case", list(KEYED_REFUSALS))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_token_signed_with_the_right_key(node, keyed_server, transport, case):
    """Signature is fine, claims are not: the token is still refused."""
    seen = run_scenario(node, keyed_server, "connect", transport=transport,
                        options={"auth": {"token": KEYED_REFUSALS[case]()}})
    assert_unauthorized(seen)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fresh_token_signed_with_the_right_key_connects(node, keyed_server, transport):
    """The control for the refusals above: same key, valid claims, a user with no groups."""
    token = jwt.encode(_claims(), JWT_SECRET, algorithm="HS256")
    seen = run_scenario(node, keyed_server, "connect", transport=transport, options={"auth": {"token": token}})
    assert seen["outcome"] == "connected", seen
    assert seen["transport"] == transport
    assert seen["list_groups"] == {"ok": True, "groups": []}


# ---------------------------------------------------------------- joining and reading


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_join_group(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "join_group", transport=transport, tokens=tokens)
    assert seen["transport"] == transport

    join = seen["join"]
    assert join["ok"] is True, join
    assert join["group"] == {"id": CALCULUS, "name": "Calculus I"}
    assert len(join["messages"]) == 3
    for seq, (message, (sender, content)) in enumerate(zip(join["messages"], SEEDED), start=1):
        assert_message(message, group_id=CALCULUS, sender_id=sender, seq=seq, content=content)
    assert join["has_more"] is False
    assert join["latest_seq"] == 3
    assert join["last_read_seq"] == 0
    assert join["unread_count"] == 2  # Mei's and Juan's; Ana's own does not count
    assert join["online"] == [ANA]

    # Joining again changes nothing but the page asked for.
    again = seen["join_again_limit_2"]
    assert seqs(again) == [2, 3] and again["has_more"] is True
    assert again["online"] == [ANA] and again["latest_seq"] == 3
    since_1 = seen["join_since_1"]
    assert seqs(since_1) == [2, 3] and since_1["has_more"] is False
    since_0 = seen["join_since_0_limit_1"]
    assert seqs(since_0) == [1] and since_0["has_more"] is True
    since_3 = seen["join_since_3"]
    assert since_3["messages"] == [] and since_3["has_more"] is False and since_3["latest_seq"] == 3

    upper = seen["join_uppercase_id"]
    assert upper["ok"] is True and upper["group"]["id"] == CALCULUS
    assert all(m["group_id"] == CALCULUS for m in upper["messages"])

    empty = seen["join_empty_group"]
    assert empty["group"] == {"id": CHEMISTRY, "name": "Organic Chemistry"}
    assert empty["messages"] == [] and empty["has_more"] is False
    assert empty["latest_seq"] == 0 and empty["last_read_seq"] == 0 and empty["unread_count"] == 0
    assert empty["online"] == [ANA]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_history_paging(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "history", transport=transport, tokens=tokens)
    assert seen["empty_join"]["latest_seq"] == 0 and seen["empty_join"]["messages"] == []
    assert seen["empty_history"] == {"ok": True, "messages": [], "has_more": False}

    sent = [ack["message"] for ack in seen["sends"]]
    for seq, message in enumerate(sent, start=1):
        assert_message(message, group_id=CHEMISTRY, sender_id=ANA, seq=seq, content=f"note {seq}",
                       client_msg_id=f"h-{seq}")

    pages = seen["pages"]
    expected = {
        "latest_3": ([5, 6, 7], True),
        "before_5_limit_3": ([2, 3, 4], True),
        "before_2_limit_3": ([1], False),
        "after_0_limit_3": ([1, 2, 3], True),
        "after_3_limit_3": ([4, 5, 6], True),
        "after_6_limit_3": ([7], False),
        "after_7": ([], False),
        "default_limit": ([1, 2, 3, 4, 5, 6, 7], False),
        "null_bounds": ([1, 2, 3, 4, 5, 6, 7], False),
    }
    got = {name: (seqs(pages[name]), pages[name]["has_more"]) for name in expected if pages[name].get("ok")}
    assert got == expected, {name: pages[name] for name in expected}
    assert pages["default_limit"]["messages"] == sent
    assert_refused(pages["both_bounds"], "invalid_payload")

    # Scrolling up page by page yields every message once, and stops.
    walk = seen["walk_back"]
    assert [seqs(page) for page in walk] == [[6, 7], [4, 5], [2, 3], [1]]
    assert [page["has_more"] for page in walk] == [True, True, True, False]

    assert seen["mei_history"] == {"ok": True, "messages": sent, "has_more": False}


# ---------------------------------------------------------------- sending


@pytest.mark.parametrize("transports", PAIRS)
def test_send_message_broadcast_and_duplicate(node, demo_server, tokens, transports):
    seen = run_scenario(node, demo_server, "send_message", transports=transports, tokens=tokens)
    assert seen["transports"] == transports
    assert seen["joins"]["ana"]["online"] == [ANA]
    assert seen["joins"]["juan"]["online"] == sorted([ANA, JUAN])

    first = seen["first"]
    assert first["ok"] is True and first["duplicate"] is False, first
    message = first["message"]
    assert_message(message, group_id=CALCULUS, sender_id=ANA, seq=4,
                   content="Hola! ¿Quién trae café? ☕", client_msg_id="c-first")
    # Both connections, the sender's included, get the stored message.
    assert seen["broadcast_first"] == {"ana": message, "juan": message}

    resend = seen["resend"]
    assert resend == {"ok": True, "message": message, "duplicate": True}

    # The same client_msg_id from another sender is a different message.
    reply = seen["reply"]
    assert reply["ok"] is True and reply["duplicate"] is False, reply
    assert_message(reply["message"], group_id=CALCULUS, sender_id=JUAN, seq=5,
                   content="Yo llevo galletas", client_msg_id="c-first")

    # The resend broadcast nothing: each client saw each message once, in seq order.
    for who in ("ana", "juan"):
        got = [(m["id"], m["seq"]) for m in seen["messages_seen"][who]]
        assert got == [(message["id"], 4), (reply["message"]["id"], 5)], (who, seen["messages_seen"][who])


INVALID_CASES = {  # result name -> field the details must name (None: the payload as a whole)
    "send_content_number": "content",
    "send_missing_group_id": "group_id",
    "send_unknown_field": "colour",
    "send_string_payload": None,
    "send_array_payload": None,
    "send_no_payload": None,
    "send_blank_content": "content",
    "send_too_long_content": "content",
    "send_bad_group_id": "group_id",
    "send_client_msg_id_too_long": "client_msg_id",
    "join_number_payload": None,
    "join_limit_zero": "limit",
    "history_limit_string": "limit",
    "history_limit_101": "limit",
    "history_limit_float": "limit",
    "typing_string_boolean": "is_typing",
    "mark_read_boolean_seq": "seq",
    "unknown_event": None,
}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_invalid_payloads_are_answered(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "invalid_payloads", transport=transport, tokens=tokens)
    results = seen["results"]
    problems = {
        name: problem
        for name, field in INVALID_CASES.items()
        if (problem := refusal_problem(results[name], "invalid_payload", field)) is not None
    }
    assert problems == {}

    after = seen["afterwards"]
    assert after["connected"] is True
    assert after["list_groups"] == {"ok": True, "groups": ANA_GROUPS}
    # None of the refused sends was stored: the next valid one is seq 4.
    assert after["valid_send"]["ok"] is True, after["valid_send"]
    assert_message(after["valid_send"]["message"], group_id=CALCULUS, sender_id=ANA, seq=4,
                   content="finally a valid one")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refusals_follow_the_contract(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "refusals", transport=transport, tokens=tokens)
    expected = {
        "lucia_join": "not_member",
        "lucia_history": "not_member",
        "lucia_send": "not_member",
        "lucia_typing": "not_member",
        "lucia_mark_read": "not_member",
        "omar_join": "not_member",
        "unknown_group_join": "group_not_found",
        "unknown_group_history": "group_not_found",
        "unknown_group_send": "group_not_found",
        "sender_id_of_other": "forbidden",
        # forbidden (sender_id) comes before group_not_found, invalid_payload before both
        "sender_id_of_other_unknown_group": "forbidden",
        "sender_id_of_other_bad_content": "invalid_payload",
        "juan_edits_anas": "forbidden",
        "juan_deletes_anas": "forbidden",
        "edit_unknown_message": "message_not_found",
        "edit_in_other_group": "message_not_found",
        "lucia_edits_anas": "not_member",
    }
    problems = {
        name: problem for name, code in expected.items()
        if (problem := refusal_problem(seen[name], code)) is not None
    }
    assert problems == {}

    # A non-member learns nothing about the group's messages.
    for name in ("lucia_join", "lucia_history"):
        assert set(seen[name]) == {"ok", "error"}, seen[name]
    assert seen["lucia_list_groups"] == {"ok": True, "groups": []}

    assert seen["sender_id_own"]["ok"] is True, seen["sender_id_own"]
    assert_message(seen["sender_id_own"]["message"], group_id=CALCULUS, sender_id=ANA, content="I am Ana")
    assert seen["sender_id_own_uppercase"]["ok"] is True, seen["sender_id_own_uppercase"]
    assert seen["sender_id_own_uppercase"]["message"]["sender_id"] == ANA

    # Only what was accepted is in the history, numbered without gaps, Ana's text untouched.
    history = seen["history_after"]
    assert seqs(history) == [1, 2, 3, 4, 5, 6]
    assert [m["content"] for m in history["messages"][3:]] == ["Ana's message", "I am Ana", "Still Ana"]
    assert history["messages"][3] == seen["ana_message"]["message"]


# ---------------------------------------------------------------- live events


@pytest.mark.parametrize("transports", PAIRS)
def test_typing_reaches_others_only(node, demo_server, tokens, transports):
    seen = run_scenario(node, demo_server, "typing", transports=transports, tokens=tokens)
    assert seen["transports"] == transports
    assert seen["acks"] == {"start": {"ok": True}, "stop": {"ok": True}, "juan": {"ok": True}}
    ana_typing = {"group_id": CALCULUS, "user_id": ANA, "name": NAMES[ANA], "is_typing": True}
    juan_typing = {"group_id": CALCULUS, "user_id": JUAN, "name": NAMES[JUAN], "is_typing": True}
    assert seen["juan_saw_start"] == ana_typing
    assert seen["juan_saw_stop"] == {**ana_typing, "is_typing": False}
    assert seen["ana_saw_juan"] == juan_typing
    # Nobody hears their own typing.
    assert seen["typing_seen"]["ana"] == [juan_typing]
    assert seen["typing_seen"]["juan"] == [ana_typing, {**ana_typing, "is_typing": False}]


@pytest.mark.parametrize("transports", PAIRS)
def test_presence_online_and_offline(node, demo_server, tokens, transports):
    seen = run_scenario(node, demo_server, "presence", transports=transports, tokens=tokens)
    assert seen["transports"] == transports

    def presence(user: str, online: bool) -> dict[str, Any]:
        return {"group_id": CALCULUS, "user_id": user, "name": NAMES[user], "online": online}

    assert seen["ana_join"]["online"] == [ANA]
    assert seen["juan_join"]["online"] == sorted([ANA, JUAN])
    assert seen["ana_saw_juan_online"] == presence(JUAN, True)
    assert seen["juan_join_again"]["ok"] is True and seen["juan_join_again"]["online"] == sorted([ANA, JUAN])
    assert seen["juan2_join"]["ok"] is True and seen["juan2_join"]["online"] == sorted([ANA, JUAN])
    assert seen["juan2_leave"] == {"ok": True}
    assert seen["ana_saw_juan_offline"] == presence(JUAN, False)
    assert seen["mei_join"]["online"] == sorted([ANA, MEI])

    # Once per user, not per connection; never about oneself; nothing for a repeated join.
    assert seen["presence_seen"]["ana"] == [presence(JUAN, True), presence(JUAN, False), presence(MEI, True)]
    assert seen["presence_seen"]["juan"] == []
    assert seen["presence_seen"]["mei"] == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mark_read(node, demo_server, tokens, transport):
    seen = run_scenario(node, demo_server, "mark_read", transport=transport, tokens=tokens)
    assert seen["join"]["last_read_seq"] == 0 and seen["join"]["unread_count"] == 2

    def read(last: int, unread: int) -> dict[str, Any]:
        return {"ok": True, "last_read_seq": last, "unread_count": unread, "mention_count": 0}

    assert seen["steps"] == {
        "read_1": read(1, 2),
        "read_3": read(3, 0),
        "read_2_backwards": read(3, 0),  # never moves back
        "read_0": read(3, 0),
        "read_past_latest": read(3, 0),  # capped at latest_seq
    }
    assert seen["juan_send"]["message"]["seq"] == 4
    assert seen["ana_send"]["message"]["seq"] == 5

    ana_groups = seen["groups_after_sends"]["ana"]["groups"]
    # Juan's new message is unread for Ana; her own is not.
    assert ana_groups[0] == {"id": CALCULUS, "name": "Calculus I", "latest_seq": 5, "latest_rev": 5, "unread_count": 1,
                             "mention_count": 0, "open_questions": 0}
    juan_groups = seen["groups_after_sends"]["juan"]["groups"]
    assert juan_groups == [{"id": CALCULUS, "name": "Calculus I", "latest_seq": 5, "latest_rev": 5, "unread_count": 3,
                           "mention_count": 0, "open_questions": 0}]

    assert seen["juan_delete"]["ok"] is True
    # A deleted message is no longer unread.
    assert seen["groups_after_delete"]["groups"][0]["unread_count"] == 0

    rejoin = seen["rejoin"]
    assert (rejoin["last_read_seq"], rejoin["unread_count"], rejoin["latest_seq"]) == (3, 0, 5)
    assert seen["read_all"] == read(5, 0)


@pytest.mark.parametrize("transports", PAIRS)
def test_edit_and_delete(node, demo_server, tokens, transports):
    seen = run_scenario(node, demo_server, "edit_delete", transports=transports, tokens=tokens)
    assert seen["transports"] == transports
    original = seen["sent"]["message"]
    assert_message(original, group_id=CALCULUS, sender_id=ANA, seq=4, content="The exam is on Mondya",
                   client_msg_id="e-1")

    edit = seen["edit"]
    assert edit["ok"] is True, edit
    edited = edit["message"]
    assert TIMESTAMP.fullmatch(edited["edited_at"] or ""), edited
    assert edited == {**original, "content": "The exam is on Monday", "edited_at": edited["edited_at"],
                      "rev": original["rev"] + 1}
    assert seen["updated"] == {"ana": edited, "juan": edited}
    assert seen["history_after_edit"]["messages"][-1] == edited

    delete = seen["delete"]
    assert delete["ok"] is True, delete
    tombstone = delete["message"]
    # Identity and metadata stay; the text goes.
    assert tombstone == {**edited, "content": "", "deleted": True, "rev": edited["rev"] + 1}
    assert seen["deleted"] == {"ana": tombstone, "juan": tombstone}
    assert seen["delete_again"] == {"ok": True, "message": tombstone}
    assert_refused(seen["edit_deleted"], "message_not_found")
    assert seen["history_after_delete"]["messages"][3] == tombstone

    # One broadcast each: the repeated delete and the refused edit sent nothing.
    for who in ("ana", "juan"):
        assert seen["seen"][who] == {"updated": [edited], "deleted": [tombstone]}, who


@pytest.mark.parametrize("transports", PAIRS)
def test_conversation(node, demo_server, tokens, transports):
    """Questions, replies, mentions, reactions, pins and answers from socket.io-client."""
    seen = run_scenario(node, demo_server, "conversation", transports=transports, tokens=tokens)
    assert seen["transports"] == transports
    question, reply = seen["asked"]["message"], seen["reply"]["message"]
    assert (question["kind"], question["answer_id"], question["reply_to"]) == ("question", None, None)
    assert reply["reply_to"] == {"id": question["id"], "seq": question["seq"], "sender_id": ANA,
                                 "sender_name": question["sender_name"], "excerpt": question["content"],
                                 "deleted": False}
    assert reply["mentions"] == [ANA]
    (calculus,) = [g for g in seen["listed"]["groups"] if g["id"] == CALCULUS]
    assert (calculus["mention_count"], calculus["open_questions"]) == (1, 1)
    assert (seen["rejoin"]["mention_count"], seen["rejoin"]["open_questions"]) == (1, 1)

    after = [ack["message"]["reactions"] for ack in seen["reactions"]]
    assert after[0] == [{"emoji": "👍🏽", "count": 1, "user_ids": [JUAN]}]
    assert after[2] == [{"emoji": "👍🏽", "count": 2, "user_ids": [JUAN, ANA]},
                        {"emoji": "👨‍👩‍👧", "count": 1, "user_ids": [ANA]}]
    assert after[3] == after[2]  # reacting twice changes nothing
    assert after[4] == [{"emoji": "👍🏽", "count": 1, "user_ids": [ANA]}, {"emoji": "👨‍👩‍👧", "count": 1, "user_ids": [ANA]}]
    assert_refused(seen["bad_emoji"], "invalid_payload")
    assert seen["pin"]["message"]["pinned"]["by"] == JUAN
    assert_refused(seen["not_asker"], "forbidden")
    accepted = seen["accept"]["message"]
    assert accepted["answer_id"] == reply["id"] and accepted["pinned"] == seen["pin"]["message"]["pinned"]
    assert seen["unanswered"]["messages"] == []
    assert [m["id"] for m in seen["pinned"]["messages"]] == [question["id"]]
    assert [m["id"] for m in seen["mentions"]["messages"]] == [reply["id"]]
    # Juan saw every change once, in rev order: four reactions that changed something, the pin, the answer.
    revs = [m["rev"] for m in seen["juan_updates"]]
    assert revs == sorted(revs) and len(revs) == 6 and seen["juan_updates"][-1] == accepted


# ---------------------------------------------------------------- revisions on several nodes


@pytest.fixture
def two_nodes(start_nodes):
    return start_nodes(2, RATE_LIMIT_SEND_PER_S="0", RATE_LIMIT_EVENTS_PER_S="0")


def test_mixed_changes_on_two_nodes_and_a_reader_that_keeps_reconnecting(node, two_nodes):
    """1,000 sends, edits and deletes by three socket.io-client writers on two
    nodes; a fourth client that leaves and comes back on either node, over any
    transport, holds exactly what the server holds by following revisions."""

    total = 1000
    tokens = {"ana": make_token(MATHS_ANA), "ben": make_token(BEN), "carol": make_token(CAROL), "reader": make_token(MATHS_ANA)}
    seen = run_scenario(node, two_nodes[0], "revisions", urls=[n.url for n in two_nodes], group=MATHS,
                        total=total, writers=["ana", "ben", "carol"], reader="reader", tokens=tokens)
    assert seen["refused"] == []
    assert seen["acked_revs"] == list(range(1, total + 1))  # each change its own rev, none skipped
    assert seen["disorder"] == [], "a connection saw revisions go backwards or repeat"
    assert seen["visits"] >= 3
    assert seen["truth_mark"] == seen["replica_mark"] == total
    assert seen["replica"] == seen["truth"]
    assert all(m["rev"] >= 1 for m in seen["truth"])
    def fills() -> list[str]:
        # A node fills a gap from storage when a rev is late over Redis; if that read fails or
        # takes over 2 s it lets the gap go (clients fill it with get_changes): the logs say which.
        return [line for n in two_nodes for line in n.log().splitlines() if "changes of" in line or "revs between" in line]

    for name, revs in zip(("ana", "ben", "carol"), seen["writers_live_revs"], strict=True):
        assert revs == list(range(1, total + 1)), \
            f"{name} missed revs {sorted(set(range(1, total + 1)) - set(revs))[:10]}; fills: {fills()[-10:]}"
