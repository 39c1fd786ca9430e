"""The one error envelope, shared by acks and HTTP answers."""

from __future__ import annotations

from typing import Any

# code -> HTTP status for the same refusal over HTTP.
HTTP_STATUS = {
    "invalid_payload": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_member": 403,
    "group_not_found": 404,
    "message_not_found": 404,
    "attachment_not_found": 404,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "storage_unavailable": 503,
    "internal": 500,
}

MESSAGES = {
    "invalid_payload": "The request is not valid.",
    "unauthorized": "A valid token is required.",
    "forbidden": "You are not allowed to do that.",
    "not_member": "You are not a member of this group.",
    "group_not_found": "This group does not exist.",
    "message_not_found": "This message does not exist in this group.",
    "attachment_not_found": "This attachment does not exist.",
    "payload_too_large": "The upload is too large.",
    "unsupported_media_type": "This type of file is not accepted.",
    "rate_limited": "Too many requests; slow down.",
    "storage_unavailable": "Storage is unavailable; try again (resending with the same client_msg_id is safe).",
    "internal": "Internal server error.",
}


class ChatError(Exception):
    """A refusal that reaches the client as ``{"ok": false, "error": {...}}``."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        assert code in HTTP_STATUS, code
        super().__init__(message or MESSAGES[code])
        self.code = code
        self.message = message or MESSAGES[code]
        self.details = details
        self.retry_after_ms = retry_after_ms

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def envelope(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        if self.retry_after_ms is not None:
            error["retry_after_ms"] = self.retry_after_ms
        return {"ok": False, "error": error}


def invalid(details: dict[str, Any], message: str | None = None) -> ChatError:
    return ChatError("invalid_payload", message, details=details)
