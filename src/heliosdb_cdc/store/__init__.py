"""State: catalog, cursors, delivery records, dead letters; in SQLite (the default) or
PostgreSQL (``state.url``), behind one :class:`Store` interface."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._base import Store
from ._lease import Lease
from ._postgres import DEFAULT_SCHEMA, PostgresStore
from ._sqlite import SCHEMA_VERSION, SQLiteStore, sink_mark_key

if TYPE_CHECKING:
    from .._config import Config

__all__ = [
    "DEFAULT_SCHEMA",
    "SCHEMA_VERSION",
    "Lease",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "open_store",
    "sink_mark_key",
]


def open_store(config: Config) -> Store:
    """The store ``config`` names: ``state.url`` (PostgreSQL) or SQLite under ``state_dir``."""
    url = config.state.url
    if url is not None:
        return PostgresStore(url.get_secret_value(), config.state.schema_name)
    return SQLiteStore(Path(config.state_dir))


if TYPE_CHECKING:  # both stores implement the interface (checked by mypy)

    def _implements(sqlite: SQLiteStore, postgres: PostgresStore) -> tuple[Store, Store]:
        return sqlite, postgres
