"""Server-to-client WebSocket frames, built once and written straight to a transport."""

from __future__ import annotations

from asyncio import Transport

TEXT, BINARY, CLOSE, PONG = 0x81, 0x82, 0x88, 0x8A  # first header byte: final frame, opcode


def websocket_frame(payload: bytes, first: int = TEXT) -> bytes:
    """One unmasked, final, uncompressed WebSocket frame (server to client):
    text (``payload`` is UTF-8) unless ``first`` says another opcode."""
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


def write_frames(transport: Transport, frames: list[bytes]) -> None:
    """One write with every frame waiting for ``transport``, unless it is closing."""
    if not transport.is_closing():
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
