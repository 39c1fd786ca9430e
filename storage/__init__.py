"""Persistence behind one interface (``storage.base.Store``)."""

from .base import Message, StorageUnavailable, Store
from .outbox import MemoryOutbox, Outbox


def make_store(uri: str, db_name: str) -> Store:
    """The backend for a ``MONGODB_URI``: ``memory://`` or a MongoDB connection string."""
    if uri.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    from .mongo import MongoStore

    return MongoStore(uri, db_name)


def make_outbox(store: Store) -> Outbox:
    """The webhook outbox beside ``store``: a collection in its database, or in memory."""
    from .mongo import MongoStore

    if isinstance(store, MongoStore):
        from .mongo_outbox import MongoOutbox

        return MongoOutbox(store)
    return MemoryOutbox()


__all__ = ["Message", "Outbox", "Store", "StorageUnavailable", "make_outbox", "make_store"]
