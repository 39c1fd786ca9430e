"""Attachments over HTTP on both stores (GridFS on the test MongoDB server): upload,
type detection from the bytes, image size and thumbnail, download with ``Range`` and
the security headers, who may read a file, the upload limits and their metrics."""

from __future__ import annotations

import asyncio
import io
import struct
import zipfile
import zlib
from typing import Any

import aiohttp
import pytest
from PIL import Image

from cluster.rate_limits import Bucket, RateLimits
from server import attachments as server_attachments
from server.keys import ATTACHMENTS, STORE
from storage.mongo_attachments import GridFSAttachments
from tests.support.chat import ANA, BEN, CAROL, DAN, MATHS, NOWHERE, PHYSICS, make_settings, make_token
from tests.support.chat import both_stores as backend

MiB = 1024 * 1024


def png(width: int = 640, height: int = 480, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "teal").save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 1200, height: int = 900) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(out, "JPEG", quality=90)
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        package.writestr("[Content_Types].xml", "<Types/>")
        package.writestr("word/document.xml", "<w:document/>")
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that claims ten billion pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9)) + chunk(
        b"IEND", b"")


def zip_of_zeros(size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * size)
    return out.getvalue()


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


async def upload(http: aiohttp.ClientSession, url: str, data: bytes, *, name: str = "file.bin", user: str = ANA,
                 group: str = MATHS, content_type: str = "application/octet-stream") -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData(quote_fields=False)  # names as browsers send them: UTF-8, not %-encoded
    form.add_field("file", io.BytesIO(data), filename=name, content_type=content_type)
    async with http.post(f"{url}/study-groups/{group}/attachments", data=form, headers=auth(user)) as resp:
        return resp.status, await resp.json()


async def raw_upload(http: aiohttp.ClientSession, url: str, data: bytes, *, name: bytes,
                     user: str = ANA) -> tuple[int, dict[str, Any]]:
    """A multipart body written byte for byte (a client library would refuse control characters)."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + b"\"\r\n"
            b"Content-Type: text/plain\r\n\r\n" + data + b"\r\n--b--\r\n")
    headers = {**auth(user), "Content-Type": "multipart/form-data; boundary=b"}
    async with http.post(f"{url}/study-groups/{MATHS}/attachments", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_member_uploads_files_and_members_download_them_intact(server_url, http):
    photo = jpeg()
    status, body = await upload(http, server_url, photo, name="pizarra.jpg", content_type="image/jpeg")
    assert status == 200, body
    attachment = body["attachment"]
    assert attachment == {"id": attachment["id"], "name": "pizarra.jpg", "size": len(photo),
                          "content_type": "image/jpeg", "width": 1200, "height": 900}
    status, body = await upload(http, server_url, PDF, name="examen 2025.pdf", user=BEN)
    assert status == 200 and body["attachment"]["content_type"] == "application/pdf", body
    assert "width" not in body["attachment"]
    pdf_id = body["attachment"]["id"]

    # Carol, a member, downloads both, byte for byte.
    async with http.get(f"{server_url}/attachments/{attachment['id']}", headers=auth(CAROL)) as resp:
        assert resp.status == 200 and await resp.read() == photo
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.headers["Content-Disposition"].startswith("inline;")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Accept-Ranges"] == "bytes"
    async with http.get(f"{server_url}/attachments/{pdf_id}", headers=auth(CAROL)) as resp:
        assert resp.status == 200 and await resp.read() == PDF
        assert "filename*=UTF-8''examen%202025.pdf" in resp.headers["Content-Disposition"]

    # The thumbnail is a small JPEG of the same proportions.
    async with http.get(f"{server_url}/attachments/{attachment['id']}/thumbnail", headers=auth(BEN)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(await resp.read()))
        assert thumb.size == (320, 240)
    async with http.get(f"{server_url}/attachments/{pdf_id}/thumbnail", headers=auth(BEN)) as resp:
        assert resp.status == 404


async def test_ranges_resume_a_download(server_url, http):
    body = PDF + bytes(range(256)) * 2048  # half a MiB after a PDF header
    status, answer = await upload(http, server_url, body, name="notes.pdf")
    assert status == 200, answer
    url = f"{server_url}/attachments/{answer['attachment']['id']}"
    for header, (start, end) in (
        ("bytes=0-99", (0, 100)), ("bytes=1000-", (1000, len(body))), ("bytes=-500", (len(body) - 500, len(body))),
        (f"bytes=300000-{len(body) + 50}", (300000, len(body))),
    ):
        async with http.get(url, headers={**auth(BEN), "Range": header}) as resp:
            assert resp.status == 206, header
            assert await resp.read() == body[start:end], header
            assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(body)}"
    async with http.get(url, headers={**auth(BEN), "Range": f"bytes={len(body)}-"}) as resp:
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(body)}"
    async with http.get(url, headers={**auth(BEN), "Range": "pages=1-2"}) as resp:
        assert resp.status == 200 and await resp.read() == body


async def test_outsiders_get_404_and_learn_nothing(server_url, http):
    status, body = await upload(http, server_url, png(), name="board.png", group=PHYSICS)
    assert status == 200, body
    attachment_id = body["attachment"]["id"]
    missing = "65c000000000000000000099"
    for user, path in ((BEN, attachment_id), (DAN, attachment_id), (BEN, missing), (ANA, missing),
                       (BEN, f"{attachment_id}/thumbnail"), (ANA, "not-an-id")):
        async with http.get(f"{server_url}/attachments/{path}", headers=auth(user)) as resp:
            assert resp.status == 404, (user, path)
            assert (await resp.json())["error"]["code"] == "attachment_not_found"
    async with http.get(f"{server_url}/attachments/{attachment_id}") as resp:
        assert resp.status == 401
    # Uploads are for members of an existing group.
    assert (await upload(http, server_url, png(), user=BEN, group=PHYSICS))[0] == 403
    assert (await upload(http, server_url, png(), group=NOWHERE))[0] == 404
    assert (await upload(http, server_url, png(), group="nope"))[0] == 400


@pytest.mark.parametrize(("data", "declared", "expected"), [
    (b"MZ\x90\x00\x03" + b"\0" * 500, "image/png", 415),  # an executable declared as an image
    (b"\x89PNG\r\n\x1a\n" + b"MZ\x90\x00" + b"\0" * 500, "image/png", 415),  # a PNG header on an executable
    (png_bomb(), "image/png", 415),  # ten billion pixels in a few hundred bytes
    (b"PK\x03\x04" + b"\0" * 200, "application/pdf", 415),  # a broken ZIP as a PDF
    (zip_of_zeros(16 * MiB), "image/jpeg", 415),  # a ZIP bomb named like a photo (never unpacked)
    (b"", "text/plain", 415),
    (b"\xff\xfe\x00\x00garbage\x00\x01", "text/plain", 415),
], ids=["exe-as-image", "png-header-on-exe", "pixel-bomb", "zip-as-pdf", "zip-bomb", "empty", "binary-as-text"])
async def test_the_type_comes_from_the_bytes(server_url, http, data, declared, expected):
    status, body = await upload(http, server_url, data, name="x.png", content_type=declared)
    assert status == expected, body
    assert body["error"]["code"] == "unsupported_media_type"


async def test_allowed_types_are_detected_whatever_was_declared(server_url, http):
    cases = [(png(100, 50, "RGBA"), "image/png"), (docx(), "application/vnd.openxmlformats-officedocument."
                                                   "wordprocessingml.document"),
             ("Apuntes: derivadas y límites\n".encode(), "text/plain")]
    for data, expected in cases:
        status, body = await upload(http, server_url, data, name="a.bin", content_type="application/x-whatever")
        assert status == 200 and body["attachment"]["content_type"] == expected, body
    text_id = body["attachment"]["id"]
    async with http.get(f"{server_url}/attachments/{text_id}", headers=auth(ANA)) as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert "sandbox" in resp.headers["Content-Security-Policy"]


async def test_names_are_cleaned_of_paths_and_control_characters(server_url, http):
    for raw, clean in (("../../etc/passwd", "passwd"), (r"C:\\Users\\ana\\notas.txt", "notas.txt"),
                       ("evil\u202etxt.exe", "eviltxt.exe"), ("a\u0085b\u200bc\ufeff.txt", "abc.txt"), ("...", "file"),
                       ("ñandú " * 100, ("ñandú " * 100)[:255].strip())):
        # In the header's quoted string a backslash escapes the next character (so "C:\\Users" is C:\Users).
        status, body = await raw_upload(http, server_url, b"hola\n", name=raw.encode())
        assert status == 200 and body["attachment"]["name"] == clean, (raw, body)
    # Control bytes in the part's headers: the body is not valid multipart.
    status, body = await raw_upload(http, server_url, b"hola\n", name=b"a\x00b\x1f.txt")
    assert status == 400 and body["error"]["code"] == "invalid_payload"


@pytest.fixture
def settings():
    return make_settings(attachment_max_bytes=MiB)


async def test_a_file_over_the_limit_is_413_while_it_is_read(server_url, http):
    status, body = await upload(http, server_url, PDF + b"\0" * (MiB - len(PDF)))
    assert status == 200, body
    status, body = await upload(http, server_url, PDF + b"\0" * (MiB + 1 - len(PDF)))
    assert status == 413 and body["error"]["code"] == "payload_too_large"

    # Declared far too large: refused before any of it is read. Streamed without a length: counted.
    async def endless():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n\r\n%PDF-1.4\n"
        for _ in range(64):
            yield b"\0" * 65536

    headers = {**auth(ANA), "Content-Type": "multipart/form-data; boundary=b"}
    async with http.post(f"{server_url}/study-groups/{MATHS}/attachments", data=endless(), headers=headers) as resp:
        assert resp.status == 413


async def test_two_files_in_one_upload_are_refused(server_url, http):
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"uno\n"), filename="a.txt")
    form.add_field("file", io.BytesIO(b"dos\n"), filename="b.txt")
    async with http.post(f"{server_url}/study-groups/{MATHS}/attachments", data=form, headers=auth(ANA)) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_payload"
    async with http.post(f"{server_url}/study-groups/{MATHS}/attachments", json={"file": "x"},
                         headers=auth(ANA)) as resp:
        assert resp.status == 400


class TestUploadRateLimits:
    @pytest.fixture
    def settings(self):
        limits = RateLimits(upload=Bucket(0.01, 3), upload_bytes=Bucket(1.0, 2 * MiB))
        return make_settings(rate_limits=limits, attachment_max_bytes=2 * MiB)

    async def test_uploads_per_user_are_limited_by_count_and_by_bytes(self, server_url, http):
        for _ in range(3):
            assert (await upload(http, server_url, b"hola\n"))[0] == 200
        status, body = await upload(http, server_url, b"hola\n")
        assert status == 429 and body["error"]["retry_after_ms"] > 0
        assert (await upload(http, server_url, b"hola\n", user=BEN))[0] == 200  # per user
        # Ben's bytes: 2 MiB, taken by each upload's declared size.
        big = PDF + b"\0" * (MiB + 200_000)
        assert (await upload(http, server_url, big, user=BEN))[0] == 200
        status, body = await upload(http, server_url, big, user=BEN)
        assert status == 429, body
        async with http.get(f"{server_url}/metrics") as resp:
            text = await resp.text()
        assert 'chat_uploads_total{outcome="ok"} 5.0' in text
        assert 'chat_uploads_total{outcome="rate_limited"} 2.0' in text


class TestOrphans:
    @pytest.fixture
    def settings(self):
        return make_settings(attachment_orphan_ttl_s=1.0)

    async def test_an_upload_no_message_took_is_removed_after_its_time(self, server_url, http):
        status, body = await upload(http, server_url, b"borrador\n", name="draft.txt")
        assert status == 200, body
        url = f"{server_url}/attachments/{body['attachment']['id']}"
        async with http.get(url, headers=auth(BEN)) as resp:
            assert resp.status == 200
        for _ in range(60):  # the sweep runs every second with a 1 s lifetime
            await asyncio.sleep(0.1)
            async with http.get(url, headers=auth(BEN)) as resp:
                if resp.status == 404:
                    break
        else:
            raise AssertionError("the orphan upload was never removed")


    async def test_a_send_that_stopped_after_storing_keeps_its_files(self, server, server_url, http):
        """A claimed file whose message was stored (the send stopped before marking it) is
        kept and marked; one whose message never was is removed like any orphan."""
        files, store = server.app[ATTACHMENTS], server.app[STORE]
        kept = (await upload(http, server_url, b"guardado\n", name="kept.txt"))[1]["attachment"]
        lost = (await upload(http, server_url, b"perdido\n", name="lost.txt"))[1]["attachment"]
        stored_id, never_id = "65d000000000000000000001", "65d000000000000000000002"
        assert [a.id for a in await files.claim([kept["id"]], "x:1", stored_id)] == [kept["id"]]
        assert [a.id for a in await files.claim([lost["id"]], "x:2", never_id)] == [lost["id"]]
        await store.add_message(MATHS, sender_id=ANA, sender_name="Ana", content="", client_msg_id="x-1",
                                attachments=[kept], message_id=stored_id)
        url = f"{server_url}/attachments/{{}}"
        for _ in range(60):
            await asyncio.sleep(0.1)
            async with http.get(url.format(lost["id"]), headers=auth(BEN)) as resp:
                if resp.status == 404:
                    break
        else:
            raise AssertionError("the file of a send that was never stored was not removed")
        async with http.get(url.format(kept["id"]), headers=auth(BEN)) as resp:
            assert resp.status == 200 and await resp.read() == b"guardado\n"
        assert (await files.get(kept["id"])).attached


async def test_one_node_at_a_time_holds_the_sweep_lease(store, backend):
    if backend != "mongo":
        pytest.skip("the embedded store has one process")
    await store.open()
    try:
        first, second = GridFSAttachments(lambda: store.database), GridFSAttachments(lambda: store.database)
        await first.open()
        await second.open()
        assert await first.lease("orphan-sweep", "a", 0.5)
        assert not await second.lease("orphan-sweep", "b", 0.5)
        assert await first.lease("orphan-sweep", "a", 0.5)  # renewed by its holder
        await asyncio.sleep(0.6)
        assert await second.lease("orphan-sweep", "b", 0.5)  # taken over once it ran out
        assert not await first.lease("orphan-sweep", "a", 0.5)
    finally:
        await store.close()


# -- messages with attachments --

async def send(client, **payload: Any) -> dict[str, Any]:
    return await client.call("send_message", {"group_id": MATHS, **payload})


async def test_a_message_carries_its_files_in_every_read_and_deleting_it_removes_them(connect, server_url, http):
    ana, ben = await connect(ANA), await connect(BEN)
    assert (await ben.call("join_group", {"group_id": MATHS}))["ok"]
    photo = (await upload(http, server_url, jpeg(), name="pizarra del martes.jpg"))[1]["attachment"]
    notes = (await upload(http, server_url, PDF, name="derivadas.pdf"))[1]["attachment"]

    ack = await send(ana, content="", attachments=[photo["id"], notes["id"]], client_msg_id="files-1")
    assert ack["ok"] and ack["duplicate"] is False, ack
    message = ack["message"]
    assert message["content"] == "" and message["attachments"] == [photo, notes]
    broadcast = (await ben.wait_event("message"))[0]
    assert broadcast["attachments"] == [photo, notes]
    again = await send(ana, content="", attachments=[photo["id"], notes["id"]], client_msg_id="files-1")
    assert again["duplicate"] is True and again["message"] == message

    history = await ben.call("get_history", {"group_id": MATHS, "limit": 5})
    assert history["messages"][-1]["attachments"] == [photo, notes]
    changes = await ben.call("get_changes", {"group_id": MATHS, "after_rev": message["rev"] - 1})
    assert changes["changes"][0]["attachments"] == [photo, notes]
    # File names are words of the message, also after an edit of its text.
    found = await ben.call("search_messages", {"query": "pizarra martes"})
    assert [m["id"] for m in found["results"]] == [message["id"]]
    edited = await ana.call("edit_message", {"group_id": MATHS, "message_id": message["id"], "content": "Apuntes"})
    assert edited["message"]["attachments"] == [photo, notes]
    assert [m["id"] for m in (await ben.call("search_messages", {"query": "deriv"}))["results"]] == [message["id"]]

    # Deleting the message deletes its files.
    deleted = await ana.call("delete_message", {"group_id": MATHS, "message_id": message["id"]})
    assert deleted["message"]["attachments"] == []
    for attachment in (photo, notes):
        async with http.get(f"{server_url}/attachments/{attachment['id']}", headers=auth(BEN)) as resp:
            assert resp.status == 404
    assert (await ben.call("search_messages", {"query": "pizarra"}))["results"] == []


async def test_files_that_are_not_the_senders_to_this_group_are_refused(connect, server_url, http):
    ana, ben = await connect(ANA), await connect(BEN)
    mine = (await upload(http, server_url, b"mis notas\n", name="a.txt"))[1]["attachment"]["id"]
    bens = (await upload(http, server_url, b"notas de Ben\n", name="b.txt", user=BEN))[1]["attachment"]["id"]
    elsewhere = (await upload(http, server_url, b"fisica\n", name="c.txt", group=PHYSICS))[1]["attachment"]["id"]
    unknown = "65c000000000000000000042"
    for ids in ([bens], [elsewhere], [unknown], [mine, bens]):
        ack = await send(ana, content="mira", attachments=ids)
        assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", (ids, ack)
        assert "attachments" in ack["error"]["details"]
    many = [f"65c0000000000000000000{i:02x}" for i in range(11)]
    ack = await send(ana, content="mira", attachments=many)
    assert ack.get("error", {}).get("details") == {"attachments": ["At most 10 attachment ids, not 11."]}, ack
    assert (await send(ana, content="  "))["error"]["details"] == {
        "content": ["Must not be empty (it may be when the message has attachments)."]}

    # A refused send took nothing: the file is still free, and once sent it is not free again.
    assert (await send(ana, content="", attachments=[mine]))["ok"]
    ack = await send(ana, content="otra vez", attachments=[mine])
    assert ack["error"]["code"] == "invalid_payload" and "another message" in ack["error"]["details"]["attachments"][0]
    assert (await send(ben, content="", attachments=[bens]))["ok"]


async def test_an_upload_that_stalls_or_is_left_is_given_up(server, server_url, http, monkeypatch):
    """A client that sends part of a file and then nothing (or leaves) holds no handler,
    temporary file or descriptor for long, and is no internal error."""
    monkeypatch.setattr(server_attachments, "UPLOAD_IDLE_S", 0.5)
    host, port = server.host, server.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /study-groups/{MATHS}/attachments HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {make_token(ANA)}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {MiB // 2}\r\n\r\n")
    writer.write(head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\n%PDF-1.4\n'
                 + b"\0" * 65536)
    await writer.drain()
    await asyncio.sleep(0.2)
    for _ in range(50):  # nothing more comes: the node gives up after UPLOAD_IDLE_S
        await asyncio.sleep(0.1)
        async with http.get(f"{server_url}/metrics") as resp:
            lines = [line for line in (await resp.text()).splitlines() if line.startswith('chat_events_total{event="http:upload"')]
        if lines:
            break
    assert lines == ['chat_events_total{event="http:upload",outcome="invalid_payload"} 1.0'], lines
    writer.close()
    assert (await upload(http, server_url, b"sigo aqui\n"))[0] == 200
