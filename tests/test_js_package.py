"""The JavaScript client package ``clients/js``: its own tests, its types, its install.

``clients/js/test/*.test.mjs`` run with Node's test runner against real
``python -m server`` processes on this suite's MongoDB (SecantusDB or
``MONGODB_URI``), through a proxy that drops and stalls the network; the
assertions are in those files. Here they run one file per test, and the
TypeScript declarations are checked against a typed example and against the
events the server registers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.app import create_app
from server.keys import SIO
from tests.support.chat import make_settings, seeded_store

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "js"
NODE_TESTS = sorted(path.name for path in (PACKAGE / "test").glob("*.test.mjs"))


@pytest.fixture(scope="module")
def node() -> str:
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.fail("these tests need Node.js 18+ on PATH (or deselect them with -m 'not node')", pytrace=False)
    if not (PACKAGE / "node_modules" / "socket.io-client" / "package.json").is_file():
        pytest.fail(f"run `npm ci` in {PACKAGE} first (`make deps` does)", pytrace=False)
    return node_bin


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    done = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_node_tests_exist():
    assert {"session.test.mjs", "network.test.mjs", "token.test.mjs"} <= set(NODE_TESTS)


@pytest.mark.parametrize("test_file", NODE_TESTS)
def test_client_against_a_real_server(node: str, mongo_uri: str, test_file: str):
    out = run([node, "--test", f"test/{test_file}"], cwd=PACKAGE,
              env={"CHAT_PYTHON": sys.executable, "MONGODB_URI": mongo_uri})
    assert re.search(r"^# fail 0$", out, re.M), out
    assert not re.search(r"^# pass 0$", out, re.M), out


def test_declarations_check_against_the_typed_example(node: str):
    run([node, str(PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit", "-p", "."], cwd=PACKAGE)


PROTOCOL_TYPES = (PACKAGE / "src" / "protocol.d.ts").read_text(encoding="utf-8")


def fields(name: str) -> dict[str, bool]:
    """An interface of protocol.d.ts: field -> required (inherited fields included)."""
    found = re.search(r"^(?:export )?interface %s(?: extends (\w+))? \{(.*?)\n\}" % name, PROTOCOL_TYPES, re.S | re.M)
    assert found, f"protocol.d.ts has no interface {name}"
    own = {field: not optional for field, optional in re.findall(r"^  (\w+)(\?)?:", found.group(2), re.M)}
    return {**(fields(found.group(1)) if found.group(1) else {}), **own}


def declared(name: str) -> set[str]:
    return set(fields(name))


def requests() -> dict[str, tuple[str, str]]:
    """`Requests` of protocol.d.ts: event -> (payload type, success ack type)."""
    body = re.search(r"export interface Requests \{(.*?)\n\}", PROTOCOL_TYPES, re.S)
    assert body
    return {event: (payload, ack) for event, payload, ack in re.findall(r"^  (\w+): \[(.+?), (.+?)\];", body.group(1), re.M)}


def schema_fields(schema: dict) -> dict[str, bool]:
    required = set(schema.get("required", ()))
    return {field: field in required for field in schema.get("properties", {})}


# Older clients' field, which every event accepts (it must be the caller's id): the typed
# client declares it only where older clients sent it, on send_message.
LEGACY = {"sender_id"}


def test_typed_payloads_and_acks_match_the_asyncapi_document():
    from tests.test_asyncapi import documented

    sends = documented("send")
    assert set(requests()) == set(sends)
    for event, (payload_type, ack_type) in requests().items():
        documented_payload = {k: v for k, v in schema_fields(sends[event].payload).items() if k not in LEGACY}
        typed = {} if payload_type == "NoPayload" else fields(payload_type)
        typed = {k: v for k, v in typed.items() if k not in LEGACY}
        assert typed == documented_payload, event
        reply = sends[event].replies[0]
        documented_ack = set(reply["properties"])
        typed_ack: set[str] = set()
        for name in ack_type.split(" | "):
            typed_ack |= declared(name.strip())
        assert typed_ack == documented_ack, event


def test_typed_server_events_match_the_asyncapi_document():
    from tests.test_asyncapi import documented

    receives = documented("receive")
    body = re.search(r"export interface ServerToClientEvents \{(.*?)\n\}", PROTOCOL_TYPES, re.S)
    assert body
    typed = dict(re.findall(r"^  (\w+): \(\w+: (\w+)\) => void;", body.group(1), re.M))
    assert set(typed) == set(receives)
    for event, type_name in typed.items():
        assert fields(type_name) == schema_fields(receives[event].payload), event
    message = receives["message"].payload
    for nested, type_name in (("reply_to", "ReplyQuote"), ("reactions", "Reaction"), ("pinned", "Pin"),
                              ("attachments", "Attachment")):
        prop = message["properties"][nested]
        options = prop.get("oneOf") or prop.get("anyOf") or [prop]
        shapes = [o.get("items", o) for o in options if o.get("type") != "null"]
        assert any(declared(type_name) == set(shape.get("properties", {})) for shape in shapes), nested


def test_typed_requests_are_the_events_the_server_registers():
    app = create_app(make_settings(), storage=seeded_store())
    registered = set(app[SIO].handlers["/"]) - {"connect", "disconnect", "*"}
    assert declared("Requests") == registered


def test_typed_server_events_are_the_ones_the_client_listens_to(node: str):
    listened = run([node, "--input-type=module", "-e",
                    "import('studychat-client').then(m => console.log(JSON.stringify(m.SERVER_EVENTS)))"],
                   cwd=PACKAGE)
    assert declared("ServerToClientEvents") == set(json.loads(listened))


def test_installable_from_the_repository(node: str, tmp_path: Path):
    npm = shutil.which("npm")
    assert npm
    (tmp_path / "package.json").write_text('{"name": "an-app", "private": true, "type": "module"}')
    run([npm, "install", "--no-audit", "--no-fund", str(PACKAGE)], cwd=tmp_path)
    manifest = json.loads((tmp_path / "package.json").read_text())
    assert "studychat-client" in manifest["dependencies"]
    out = run([node, "-e", "import('studychat-client').then(m => console.log(Object.keys(m).sort().join(' ')))"],
              cwd=tmp_path)
    assert {"ChatSession", "ChatConnection", "ChatError", "GroupTimeline", "Outbox"} <= set(out.split())


def test_the_page_imports_the_same_socket_io_client_the_package_is_tested_with():
    vendored = (ROOT / "static" / "vendor" / "socket.io.esm.min.js").read_text(encoding="utf-8")[:200]
    installed = json.loads((PACKAGE / "node_modules" / "socket.io-client" / "package.json").read_text())["version"]
    assert f"Socket.IO v{installed}\n" in vendored
    page = (ROOT / "static" / "index.html").read_text(encoding="utf-8")
    assert '"socket.io-client": "/static/vendor/socket.io.esm.min.js"' in page
