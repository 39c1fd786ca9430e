"""Logging configured once, for the entry point: text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would add a line per long-poll request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class LibraryLogger(logging.LoggerAdapter):
    """python-socketio and python-engineio log every packet (content, tokens) at
    INFO; demote that to DEBUG so nothing a user wrote reaches INFO logs."""

    def info(self, msg, *args, **kwargs):
        if self.logger.isEnabledFor(logging.DEBUG):  # once per packet: the cheap test first
            self.logger.debug(msg, *args, **kwargs)


def library_logger(name: str) -> LibraryLogger:
    return LibraryLogger(logging.getLogger(name), {})
