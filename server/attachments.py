"""Attachment routes: upload, download (with ``Range``) and thumbnails, and the
sweep that removes uploads no message took.

An upload is streamed to a temporary file and counted as it is read: past
``ATTACHMENT_MAX_BYTES`` the request is answered 413 at once, so no request
holds more than a chunk in memory. The file's type is then found from its bytes
(``storage.file_types``, in a worker thread, a few at a time) and the file
handed to the attachment store. Downloads are for members of the file's group;
anyone else gets 404, as for an id that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import unicodedata
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from handlers.errors import ChatError, invalid
from storage import file_types
from storage.attachments import Attachment, AttachmentStore, new_attachment
from storage.base import ID_RE, StorageUnavailable, now_ms

from .http import _authenticated, api_route
from .keys import ATTACHMENTS, CHAT, EVENTS, SETTINGS, STORE

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
UPLOAD_IDLE_S = 30.0  # an upload that sends nothing for this long is given up (its file and descriptor freed)
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file, in a Content-Length
INSPECTIONS_AT_ONCE = 2  # images decoded at once per process (CPU and memory bound)
MAX_NAME = 255  # code points of a file name
SWEEP_BATCH = 200
# What a malformed multipart body raises (control characters in a part's headers, a bad
# boundary), and a client that goes away in the middle of its upload.
UNREADABLE = (ValueError, AssertionError, RuntimeError, HttpProcessingError, ConnectionResetError)
CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"

# Files are inspected (read, images decoded) on a few threads of their own: a burst of
# uploads waits its turn there instead of spreading over the default executor's threads.
_INSPECTOR = ThreadPoolExecutor(max_workers=INSPECTIONS_AT_ONCE, thread_name_prefix="inspect")


def setup_attachment_routes(app: web.Application) -> None:
    app.router.add_post("/study-groups/{group_id:[^/]+}/attachments", upload)
    app.router.add_get("/attachments/{attachment_id:[^/]+}", download)
    app.router.add_get("/attachments/{attachment_id:[^/]+}/thumbnail", thumbnail)


def clean_name(raw: str | None) -> str:
    """A file name safe to store and show: the last path component, without
    control, format (bidirectional overrides) or unassigned characters, at most
    ``MAX_NAME`` code points; ``file`` when nothing is left."""
    name = unicodedata.normalize("NFC", raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").strip()
    return name[:MAX_NAME].strip() or "file"


@api_route
async def upload(request: web.Request) -> web.Response:
    user_id = await _authenticated(request)
    settings = request.app[SETTINGS]
    limiter = request.app[EVENTS].limiter
    metrics = request.app[EVENTS].observer
    retry_after = await limiter.check(user_id, "upload")
    if retry_after is not None:
        metrics.upload("rate_limited", 0)
        raise ChatError("rate_limited", "Too many uploads; wait a little.", retry_after_ms=retry_after)
    group_id = request.match_info["group_id"]
    if not ID_RE.fullmatch(group_id):
        raise invalid({"group_id": ["Not a valid id."]})
    group_id = group_id.lower()
    await request.app[CHAT].group_for(user_id, group_id)

    limit = settings.attachment_max_bytes
    declared = request.content_length
    if declared is not None and declared > limit + MULTIPART_SLACK:
        metrics.upload("too_large", 0)
        raise ChatError("payload_too_large", f"A file can have at most {limit} bytes.")
    # The bytes are reserved before they are read (the whole limit when the size is not declared).
    retry_after = await limiter.check(user_id, "upload_bytes", min(declared or limit, limit))
    if retry_after is not None:
        metrics.upload("rate_limited", 0)
        raise ChatError("rate_limited", "Too many bytes uploaded; wait a little.", retry_after_ms=retry_after)

    reader, part = await _file_part(request)
    name = clean_name(part.filename)
    with tempfile.TemporaryDirectory(prefix="upload-") as folder:
        path = Path(folder) / "file"
        try:
            size = await _receive(part, path, limit)
        except UNREADABLE:
            raise invalid({"file": ["The multipart body could not be read."]}) from None
        if size > limit:
            metrics.upload("too_large", size)
            raise ChatError("payload_too_large", f"A file can have at most {limit} bytes.")
        try:
            more = await reader.next() is not None
        except UNREADABLE:
            more = True
        if more:
            raise invalid({"file": ["Send one file per upload."]})
        try:
            found = await asyncio.get_running_loop().run_in_executor(_INSPECTOR, file_types.inspect, path)
        except file_types.Unsupported as exc:
            metrics.upload("unsupported", size)
            raise ChatError("unsupported_media_type", str(exc)) from None
        attachment = new_attachment(
            group_id, user_id, name, size, found.content_type, now_ms(),
            width=found.width, height=found.height, thumbnail_type=found.thumbnail_type,
        )
        attachment = await request.app[ATTACHMENTS].put(attachment, path, found.thumbnail)
    metrics.upload("ok", size)
    return web.json_response({"ok": True, "attachment": attachment.to_wire()})


async def _file_part(request: web.Request) -> tuple[MultipartReader, BodyPartReader]:
    """The upload's file: the first part of a ``multipart/form-data`` body, with a file name."""
    if not request.content_type.startswith("multipart/"):
        raise invalid({"file": ["Send the file as multipart/form-data."]})
    try:
        reader = await request.multipart()
        part = await reader.next()
    except UNREADABLE:
        raise invalid({"file": ["The multipart body could not be read."]}) from None
    if not isinstance(part, BodyPartReader) or part.filename is None:
        raise invalid({"file": ["The first part must be the file, with a file name."]})
    return reader, part


async def _receive(part: BodyPartReader, path: Path, limit: int) -> int:
    """Write the part to ``path``; the bytes read, stopping at ``limit`` + 1. A client
    that stops sending for ``UPLOAD_IDLE_S`` is refused (``invalid_payload``)."""
    size = 0
    with path.open("wb") as out:
        while True:
            try:
                chunk = await asyncio.wait_for(part.read_chunk(CHUNK), UPLOAD_IDLE_S)
            except TimeoutError:
                raise invalid({"file": [f"Nothing arrived for {UPLOAD_IDLE_S:g} s."]},
                              "The upload stalled.") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                return size
            out.write(chunk)
    return size


async def _readable(request: web.Request) -> Attachment:
    """The attachment, for a member of its group; 404 for anyone else, as for no such id."""
    user_id = await _authenticated(request)
    attachment_id = request.match_info["attachment_id"]
    if not ID_RE.fullmatch(attachment_id):
        raise ChatError("attachment_not_found")
    attachment = await request.app[ATTACHMENTS].get(attachment_id.lower())
    if attachment is None:
        raise ChatError("attachment_not_found")
    try:
        await request.app[CHAT].group_for(user_id, attachment.group_id)
    except ChatError:
        raise ChatError("attachment_not_found") from None
    return attachment


def _disposition(attachment: Attachment) -> str:
    kind = "inline" if attachment.content_type in file_types.INLINE else "attachment"
    ascii_name = attachment.name.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(attachment.name, safe='')}"


def _security_headers(content_type: str) -> dict[str, str]:
    # A PDF needs the browser's viewer, which a sandboxed document may not use.
    csp = CSP if content_type == file_types.PDF else f"{CSP}; sandbox"
    return {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": csp,
        "Cache-Control": "private, max-age=300",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def _wire_type(content_type: str) -> str:
    return f"{content_type}; charset=utf-8" if content_type == file_types.TEXT else content_type


@api_route
async def download(request: web.Request) -> web.StreamResponse:
    attachment = await _readable(request)
    size = attachment.size
    start, end, status = 0, size, 200
    if request.headers.get("Range"):
        try:
            wanted = request.http_range
        except ValueError:
            wanted = None  # malformed or several ranges: the whole file, as a server may answer
        if wanted is not None and (wanted.start is not None or wanted.stop is not None):
            start, end = _bounds(wanted, size)
            if start >= end:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
    headers = {
        "Content-Type": _wire_type(attachment.content_type),
        "Content-Length": str(end - start),
        "Content-Disposition": _disposition(attachment),
        "Accept-Ranges": "bytes",
        "ETag": f'"{attachment.id}"',
        **_security_headers(attachment.content_type),
    }
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    if request.method != "HEAD":
        try:
            async for chunk in request.app[ATTACHMENTS].read(attachment, start, end):
                await response.write(chunk)
        except StorageUnavailable as exc:
            # The status line is sent: cut the connection rather than end the file as if whole.
            log.warning("download of %s stopped: %s", attachment.id, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response


def _bounds(wanted: slice, size: int) -> tuple[int, int]:
    """``Range`` as aiohttp parses it (``bytes=a-b``, ``a-``, ``-n``) into [start, end)."""
    if wanted.start is None:  # the last n bytes
        return max(0, size + wanted.stop), size
    if wanted.start < 0:
        return max(0, size + wanted.start), size
    end = size if wanted.stop is None else min(size, wanted.stop)
    return wanted.start, end


@api_route
async def thumbnail(request: web.Request) -> web.Response:
    attachment = await _readable(request)
    data = None if attachment.thumbnail_type is None else await request.app[ATTACHMENTS].thumbnail(attachment)
    if data is None or attachment.thumbnail_type is None:
        raise ChatError("attachment_not_found", "This attachment has no thumbnail.")
    return web.Response(body=data, headers={
        "Content-Type": attachment.thumbnail_type, "Content-Disposition": "inline",
        **_security_headers(attachment.thumbnail_type),
    })


async def sweep_orphans(app: web.Application) -> int:
    """Remove the uploads older than ``ATTACHMENT_ORPHAN_TTL_S`` that no message took
    (a send that was stored but stopped before marking its files gets them marked);
    how many were removed."""
    store: AttachmentStore = app[ATTACHMENTS]
    ttl = app[SETTINGS].attachment_orphan_ttl_s
    removed = 0
    while True:
        cutoff = now_ms() - timedelta(seconds=ttl)
        batch = await store.orphans(cutoff, SWEEP_BATCH)
        kept: list[str] = []
        gone: list[str] = []
        for attachment in batch:
            if attachment.claimed_at is not None and attachment.claimed_at >= cutoff:
                continue  # a send may be storing its message right now
            message = None
            if attachment.message_id is not None:
                message = await app[STORE].get_message(attachment.group_id, attachment.message_id)
            carried = message is not None and any(a["id"] == attachment.id for a in message["attachments"])
            (kept if carried else gone).append(attachment.id)
        if kept:
            await store.attach(kept)
        if gone:
            removed += await store.delete(gone)
        if len(batch) < SWEEP_BATCH or not (kept or gone):
            return removed


async def orphan_sweeper(app: web.Application) -> None:
    """Sweep now and then, on one node at a time (``AttachmentStore.lease``)."""
    interval = min(60.0, max(1.0, app[SETTINGS].attachment_orphan_ttl_s / 4))
    holder = f"{os.getpid()}-{id(app)}"
    while True:
        started = time.monotonic()
        try:
            if await app[ATTACHMENTS].lease("orphan-sweep", holder, interval):
                removed = await sweep_orphans(app)
                if removed:
                    log.info("removed %d attachments no message took", removed)
        except StorageUnavailable as exc:
            log.warning("attachment sweep skipped: %s", exc)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
