"""Persistence behind one interface (``storage.base.Store``)."""

from .base import Message, StorageUnavailable, Store


def make_store(uri: str, db_name: str) -> Store:
    """The backend for a ``MONGODB_URI``: ``memory://`` or a MongoDB connection string."""
    if uri.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    from .mongo import MongoStore

    return MongoStore(uri, db_name)


__all__ = ["Message", "Store", "StorageUnavailable", "make_store"]
