"""What an uploaded file really is, from its bytes (never from the name or the
type the client declared), and what an image needs: its size and a thumbnail.

The magic numbers come from ``puremagic``; Office Open XML files, which share
the ZIP signature, are told apart by the parts their package holds; images are
opened with Pillow, whose decompression-bomb guard is an error here, not a
warning. Plain text is UTF-8 without control characters other than tab, line
and page breaks. Everything else is refused: the caller answers 415.

The functions here read files and decode images: run them in a worker thread.
"""

from __future__ import annotations

import codecs
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import puremagic
from PIL import Image, UnidentifiedImageError

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
PDF = "application/pdf"
TEXT = "text/plain"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
OLD_OFFICE = ("application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint")
OPEN_DOCUMENT = {
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
}
ALLOWED = {*IMAGE_TYPES, PDF, TEXT, DOCX, XLSX, PPTX, *OLD_OFFICE, *OPEN_DOCUMENT}
# Shown in the browser (no script can run in them with the download route's
# Content-Security-Policy); every other type is offered as a download.
INLINE = {*IMAGE_TYPES, PDF}

MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes; a bomb claiming more is refused
THUMBNAIL_SIDE = 320
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the container of .doc, .xls and .ppt
OOXML_PARTS = (("word/", DOCX), ("xl/", XLSX), ("ppt/", PPTX))
TEXT_CONTROLS = frozenset(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D}
HEAD = 8192  # bytes read for the magic numbers
ALIASES = {"image/jpg": "image/jpeg", "image/x-png": "image/png"}


class Unsupported(Exception):
    """Not one of the allowed types, or not what its first bytes claim to be."""


@dataclass(frozen=True, slots=True)
class Inspected:
    content_type: str
    width: int | None = None
    height: int | None = None
    thumbnail: bytes | None = None  # JPEG, or PNG for images with transparency
    thumbnail_type: str | None = None


def inspect(path: Path) -> Inspected:
    """The file's real type (``Unsupported`` when it is not allowed), with the
    dimensions and a thumbnail of images."""
    with path.open("rb") as f:
        head = f.read(HEAD)
    if not head:
        raise Unsupported("The file is empty.")
    content_type = _magic_type(path, head)
    if content_type is None:
        # No allowed type by its magic numbers: text (which has none) or refused.
        if _is_text(path):
            return Inspected(TEXT)
        raise Unsupported("This type of file is not accepted.")
    if content_type in IMAGE_TYPES:
        return _image(path, content_type)
    if content_type == TEXT and not _is_text(path):  # a byte-order mark alone does not make text
        raise Unsupported("This type of file is not accepted.")
    return Inspected(content_type)


def _magic_type(path: Path, head: bytes) -> str | None:
    """An allowed type the bytes show, or ``None`` when they show none of them."""
    if head.startswith(OLE2):
        return _ole2_type(path)
    try:
        matches = puremagic.magic_string(head)
    except puremagic.PureError:
        return None
    types = [ALIASES.get(m.mime_type, m.mime_type) for m in matches]
    if any(t in (DOCX, XLSX, PPTX, "application/zip") for t in types):
        return _ooxml_type(path)
    return next((t for t in types if t in ALLOWED), None)


def _ooxml_type(path: Path) -> str:
    """Word, Excel or PowerPoint by the parts in the package; any other ZIP is refused."""
    try:
        with zipfile.ZipFile(path) as package:
            names = package.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise Unsupported("This type of file is not accepted.") from None
    if "[Content_Types].xml" in names:
        for prefix, content_type in OOXML_PARTS:
            if any(name.startswith(prefix) for name in names):
                return content_type
    if "mimetype" in names:  # OpenDocument: its type is the package's first entry, stored
        try:
            with zipfile.ZipFile(path) as package:
                declared = package.read("mimetype")[:100].decode("ascii", "replace").strip()
        except (zipfile.BadZipFile, OSError, ValueError, KeyError):
            declared = ""
        if declared in OPEN_DOCUMENT:
            return declared
    raise Unsupported("This type of file is not accepted.")


def _ole2_type(path: Path) -> str:
    """.doc, .xls or .ppt: the OLE2 container's stream names say which."""
    with path.open("rb") as f:
        data = f.read(1 << 20)
    for marker, content_type in (
        ("WordDocument", "application/msword"),
        ("Workbook", "application/vnd.ms-excel"),
        ("Book", "application/vnd.ms-excel"),
        ("PowerPoint Document", "application/vnd.ms-powerpoint"),
    ):
        if marker.encode("utf-16-le") in data:
            return content_type
    raise Unsupported("This type of file is not accepted.")


def _is_text(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        while chunk := f.read(65536):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError:
                return False
            if any(ord(ch) in TEXT_CONTROLS for ch in text):
                return False
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _image(path: Path, content_type: str) -> Inspected:
    """Decode the image (a bomb or a body that is not the image its header claims is
    refused), and draw a thumbnail at most ``THUMBNAIL_SIDE`` on its longer side."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[IMAGE_TYPES[content_type]]) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise Unsupported("The image has too many pixels.")
                image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG decodes at a fraction of its size
                image.load()
                thumb = image.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise Unsupported("The image has too many pixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise Unsupported("The file is not a valid image.") from None
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    has_alpha = thumb.mode in ("RGBA", "LA", "PA") or (thumb.mode == "P" and "transparency" in thumb.info)
    out = io.BytesIO()
    if has_alpha:
        thumb.convert("RGBA").save(out, "PNG", optimize=True)
        thumbnail_type = "image/png"
    else:
        thumb.convert("RGB").save(out, "JPEG", quality=82)
        thumbnail_type = "image/jpeg"
    return Inspected(content_type, width, height, out.getvalue(), thumbnail_type)
