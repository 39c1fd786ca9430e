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


def declared(name: str) -> set[str]:
    """The keys of an interface in protocol.d.ts."""
    text = (PACKAGE / "src" / "protocol.d.ts").read_text(encoding="utf-8")
    body = re.search(r"export interface %s \{(.*?)\n\}" % name, text, re.S)
    assert body, name
    return set(re.findall(r"^  (\w+)[?]?:", body.group(1), re.M))


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
