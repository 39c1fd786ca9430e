"""The worked nginx example of docs/deploy.md, in front of two real nodes."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.chat import ANA, BEN, MATHS, make_token
from tests.support.ports import free_port
from tests.test_multinode import seeded_db, start_nodes

CONF = Path(__file__).resolve().parents[1] / "docs" / "nginx.conf"


@pytest.fixture
def nginx(tmp_path):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.fail("nginx is not installed: run `make test` (it installs Debian's nginx-light)")
    procs = []

    def _start(upstream_ports: list[int]) -> str:
        port = free_port()
        site = CONF.read_text().replace("listen 8000;", f"listen 127.0.0.1:{port};")
        for example, real in zip((8001, 8002), upstream_ports):
            site = site.replace(f"127.0.0.1:{example} ", f"127.0.0.1:{real} ")
        (tmp_path / "site.conf").write_text(site)
        (tmp_path / "nginx.conf").write_text(
            f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\n"
            "events { worker_connections 256; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
            f"  include {tmp_path}/site.conf; }}\n"
        )
        proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((tmp_path / "error.log").read_text())

    yield _start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


class Via:
    """A node-like address for the ``clients`` fixture."""

    def __init__(self, url: str) -> None:
        self.url = url


def connections(node) -> float:
    import urllib.request

    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("chat_connected_clients "):
                return float(line.split()[1])
    raise AssertionError("no chat_connected_clients metric")


async def polling_handshake(url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/socket.io/?EIO=4&transport=polling",
                                                         headers=headers) as resp:
        return resp.status


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_chat_through_nginx_and_fail_over(start_nodes, clients, nginx, transport):
    n1, n2 = start_nodes(2, TRUST_PROXY="true")
    lb = Via(nginx([n1.port, n2.port]))
    # The page's own origin through the proxy is allowed; a client's own X-Forwarded-Host is replaced.
    assert await polling_handshake(lb.url, {"Origin": lb.url}) == 200
    assert await polling_handshake(lb.url, {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"}) == 400
    ana, ben = await clients(lb, ANA, transports=(transport,)), await clients(lb, BEN, transports=(transport,))
    for c in (ana, ben):
        await c.call("join_group", {"group_id": MATHS})
    sent = await ana.call("send_message", {"group_id": MATHS, "content": f"through nginx on {transport}"})
    assert (await ben.wait_event("message"))[0] == sent["message"]

    # Every client here comes from 127.0.0.1, so ip_hash put them all on one node.
    owner, survivor = (n1, n2) if connections(n1) == 2 else (n2, n1)
    assert connections(owner) == 2
    owner.kill()
    # Sends made on the survivor while the clients were away...
    other = await clients(survivor, BEN)
    await other.call("send_message", {"group_id": MATHS, "content": "while you were away"})
    # ...are caught up after reconnecting through nginx, which now picks the survivor.
    again = await clients(lb, ANA, transports=(transport,))
    ack = await again.call("join_group", {"group_id": MATHS, "since_seq": sent["message"]["seq"]})
    assert [m["content"] for m in ack["messages"]] == ["while you were away"]
    # SIGTERM closes the transports, so the clients are not left waiting on a long-poll.
    assert survivor.terminate() == 0


async def test_a_ten_megabyte_file_goes_through_nginx_both_ways(start_nodes, nginx):
    """The sample configuration lets an upload of the default limit through, streamed."""
    (node,) = start_nodes(1, TRUST_PROXY="true")
    lb = Via(nginx([node.port, node.port]))
    body = b"%PDF-1.4\n" + bytes(range(256)) * (40 * 1024 - 1)  # just under 10 MiB
    headers = {"Authorization": f"Bearer {make_token(ANA)}"}
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(body), filename="apuntes.pdf", content_type="application/pdf")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{lb.url}/study-groups/{MATHS}/attachments", data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            attachment = (await resp.json())["attachment"]
        async with http.get(f"{lb.url}/attachments/{attachment['id']}", headers=headers) as resp:
            assert resp.status == 200 and await resp.read() == body
