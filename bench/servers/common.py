"""What every Python peer shares: the seeded users and groups, and the message object.

The harness writes one spec file (``bench/.work/spec.json``) that every peer, Python or Node,
seeds from, so they all serve the same users, groups and memberships.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from datetime import UTC, datetime
from typing import Any


def uid(i: int) -> str:
    return f"aaaaaaaa{i:016x}"


def gid(k: int) -> str:
    return f"bbbbbbbb{k:016x}"


def load_spec(path: str) -> dict[str, Any]:
    """``{"secret", "users": N, "groups": [{"k", "name", "first", "count"}]}``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def groups_of(spec: dict[str, Any]) -> dict[str, tuple[str, set[str]]]:
    """group id -> (name, member user ids)."""
    return {
        gid(g["k"]): (g["name"], {uid(i) for i in range(g["first"], g["first"] + g["count"])})
        for g in spec["groups"]
    }


def user_name(user_id: str) -> str:
    return f"Bench User {int(user_id[8:], 16)}"


def iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


_ids = itertools.count(1)
_id_prefix = os.urandom(4).hex()


def new_id() -> str:
    """A 24-hex id, unique within the process (same shape as an ObjectId)."""
    return f"{_id_prefix}{next(_ids):016x}"


def message(group_id: str, seq: int, sender_id: str, content: str) -> dict[str, Any]:
    """The wire message object of PROTOCOL.md, field for field."""
    name = user_name(sender_id)
    return {
        "type": "message",
        "kind": "message",
        "id": new_id(),
        "seq": seq,
        "rev": seq,  # peers only send: every change is a new message
        "group_id": group_id,
        "sender_id": sender_id,
        "sender": name,
        "sender_name": name,
        "content": content,
        "timestamp": iso_now(),
        "client_msg_id": None,
        "edited_at": None,
        "deleted": False,
        "mentions": [],
        "reply_to": None,
        "reactions": [],
        "pinned": None,
        "answer_id": None,
        "attachments": [],
        "deleted_by": None,
    }


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True, help="seed spec written by the harness")
    parser.add_argument("--redis-url", default=None)
    return parser
