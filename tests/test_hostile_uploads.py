"""A hostile member against the upload route, measured like ``tests/test_hostile.py``: the
server process's memory and descriptors, and the latency of a member (Ben) who keeps sending
in the same group throughout.

The attacker (Carol, a member of Maths) sends rounds of uploads at once: files over the limit
(declared, and streamed without a length), a ZIP bomb named like a photo, a PNG claiming ten
billion pixels, an executable with a PNG header, bodies that are not multipart, and a few
valid images that have to be decoded. Every answer must be the documented one, and no upload
may cost the server a whole file of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image

from tests.support.chat import CAROL, MATHS, make_token
from tests.support.probes import hostile_node
from tests.test_attachments import png_bomb, zip_of_zeros
from tests.test_hostile import BASE_ENV, BOUNDS, MIN_ATTACK_S, NodeFactory, for_at_least, under_attack, verdict

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024


def photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), "navy").save(out, "JPEG", quality=85)
    return out.getvalue()


async def test_a_member_flooding_uploads_holds_no_one_up(hostile_node: NodeFactory) -> None:
    node = hostile_node(BASE_ENV)  # the default upload limits: what one user can make a node keep is bounded
    headers = {"Authorization": f"Bearer {make_token(CAROL)}"}
    url = f"{node.url}/study-groups/{MATHS}/attachments"
    bomb, pixels, image = zip_of_zeros(64 * MiB), png_bomb(), photo()
    exe = b"\x89PNG\r\n\x1a\n" + b"MZ\x90\x00" + b"\0" * 4096

    async def streamed() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n%PDF-1.4\n'
        for _ in range(12 * 16):  # 12 MiB, no Content-Length
            yield b"\0" * 65536

    async def declared_too_big() -> str:
        """A request that declares 11 MiB (and sends only its start: the answer must come
        from the declared length, before the body is read). Written by hand, so the
        attacker's own event loop does not spend itself sending megabytes."""
        host, port = node.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = (f"POST /study-groups/{MATHS}/attachments HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: {headers['Authorization']}\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {11 * MiB}\r\n\r\n")
            writer.write(head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n')
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            return f"too big: {status_line.split()[1].decode()}"
        finally:
            writer.close()

    async def one(http: aiohttp.ClientSession, kind: str, body: bytes | None) -> str:
        try:
            if kind == "too big":
                return await declared_too_big()
            if kind == "streamed":
                resp = await http.post(url, data=streamed(), headers={
                    **headers, "Content-Type": "multipart/form-data; boundary=b"})
            elif kind == "not multipart":
                resp = await http.post(url, json={"file": "x" * 1000}, headers=headers)
            else:
                form = aiohttp.FormData(quote_fields=False)
                form.add_field("file", io.BytesIO(body or b""), filename=f"{kind}.png", content_type="image/png")
                resp = await http.post(url, data=form, headers=headers)
            async with resp:
                await resp.read()
                return f"{kind}: {resp.status}"
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            return f"{kind}: {type(exc).__name__}"

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        http = await held.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))

        async def one_round() -> Counter[str]:
            # Twice each, but one streamed upload (its 10 MiB leave the attacker's own loop too).
            calls = kinds * 2
            calls.remove(("streamed", None))
            return Counter(await asyncio.gather(*(one(http, kind, body) for kind, body in calls)))

        return await for_at_least(MIN_ATTACK_S, one_round)

    # One of each kind first: what any first upload loads once (image codecs, the type tables)
    # is not the attack's doing.
    kinds = [("zip bomb", bomb), ("pixel bomb", pixels), ("exe", exe), ("photo", image),
             ("too big", None), ("streamed", None), ("not multipart", None)]
    async with aiohttp.ClientSession() as http:
        warm = [await one(http, kind, body) for kind, body in kinds]
    assert [answer.split(": ")[1] for answer in warm] == ["415", "415", "415", "200", "413", "413", "400"], warm

    outcome, readings, _ = await under_attack(node, attack)
    cut = {"ClientOSError", "ServerDisconnectedError"}  # a refused body may be cut off while it is still sent
    allowed = {
        "zip bomb": {"415", "429"}, "pixel bomb": {"415", "429"}, "exe": {"415", "429"}, "photo": {"200", "429"},
        "too big": {"413", "429", *cut}, "streamed": {"413", "429", *cut}, "not multipart": {"400", "429"},
    }
    undocumented = Counter({k: n for k, n in outcome.items()
                            if k.split(": ", 1)[1] not in allowed[k.split(": ", 1)[0]]})
    assert outcome["photo: 200"] > 0 and outcome["zip bomb: 415"] > 0 and outcome["exe: 429"] > 0, outcome
    # The photos it accepted are the attacker's to keep (the embedded store holds files in memory).
    kept = outcome["photo: 200"] * len(image)
    verdict(undocumented, {}, readings, dataclasses.replace(BOUNDS, rss_slack=BOUNDS.rss_slack + kept))
