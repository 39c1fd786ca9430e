"""Seed data for ``--demo``: users and study groups with overlapping members.

Juan is not in Organic Chemistry and Omar is not in Calculus, and Lucía is in
no group at all, so every refusal can be seen from the page.
"""

from __future__ import annotations

from storage.memory import MemoryStore

USERS = [
    ("64b000000000000000000001", "Ana", "García"),
    ("64b000000000000000000002", "Juan", "Pérez"),
    ("64b000000000000000000003", "Mei", "Chen"),
    ("64b000000000000000000004", "Omar", "Haddad"),
    ("64b000000000000000000005", "Lucía", "Fernández"),
]
ANA, JUAN, MEI, OMAR, LUCIA = (u[0] for u in USERS)

GROUPS = [
    ("64b0000000000000000000a1", "Calculus I", [ANA, JUAN, MEI]),
    ("64b0000000000000000000a2", "Organic Chemistry", [ANA, MEI, OMAR]),
]

WELCOME = [
    (ANA, "Hola a todos! Problem set 3 is due Friday."),
    (MEI, "Does anyone have notes on the chain rule lecture?"),
    (JUAN, "I do, I'll share them after class."),
]


def seed_demo(store: object) -> None:
    """Fill an embedded store with the demo users, groups and a few messages."""
    if not isinstance(store, MemoryStore):
        raise TypeError("--demo always runs on the embedded store")
    for user_id, full_name, last_name in USERS:
        store.add_user(user_id, full_name, last_name)
    for group_id, name, members in GROUPS:
        store.add_group(group_id, name, members)
    names = {u.id: u.name for u in store.users()}
    calculus = GROUPS[0][0]
    for sender, text in WELCOME:
        store.seed_message(calculus, sender_id=sender, sender_name=names[sender], content=text)
