"""State: the SQLite store (catalog, cursors, delivery records, dead letters)."""

from ._sqlite import SCHEMA_VERSION, Store, sink_mark_key

__all__ = ["SCHEMA_VERSION", "Store", "sink_mark_key"]
