"""Captured tables are followed by name, as streams name them.

A catalog check (at start, then every few seconds) compares each captured name's
table OID with the one it had last time (kept in the state directory):

* **dropped** -- no table has the name, nor the old OID any name. PostgreSQL took
  the table out of the publication.
* **renamed** -- the old OID lives on under another name. Its changes now carry the
  new name and no stream that names the old one receives them.
* **recreated** -- the name has a table again, with another OID (or the renamed
  table got its name back). It is not in the publication until the service adds it,
  and rows written before that are not in the WAL stream: the service adds it at
  once and re-reads it with a backfill.

Each change becomes a ``SCHEMA_CHANGE`` event of that table (written into the WAL,
so it takes its place among the changes), a ``heliosdb_cdc_table_changes_total``
count, and while the name has no table, a ``warning`` state on the streams that
capture it and ``heliosdb_cdc_table_missing`` = 1.

This module is the comparison only; the service does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .postgres._decoder import table_name
from .postgres._setup import split_table

OK, DROPPED, RENAMED, RECREATED = "ok", "dropped", "renamed", "recreated"


@dataclass(frozen=True, slots=True)
class TableChange:
    table: str  # schema.table, as captured
    change: str  # dropped | renamed | recreated
    old_oid: int | None
    oid: int | None
    renamed_to: str | None = None

    @property
    def name(self) -> str:
        """The table as events name it (no ``public.``)."""
        return table_name(*split_table(self.table))

    @property
    def detail(self) -> str:
        if self.change == DROPPED:
            return (
                f"table {self.name} was dropped: its changes are not captured until a table "
                "of that name exists again (then it is re-read with a backfill)"
            )
        if self.change == RENAMED:
            return (
                f"table {self.name} was renamed to {self.renamed_to}: streams follow tables by "
                f"name, so changes of {self.renamed_to} are not delivered (rename it back, or "
                f"capture {self.renamed_to} in a stream)"
            )
        return (
            f"table {self.name} was re-created (or got its name back): it is captured again "
            "and re-read with a backfill"
        )

    def message(self) -> bytes:
        """Content of the WAL message the decoder turns into a SCHEMA_CHANGE event."""
        value: dict[str, Any] = {"table": self.name, "table_change": self.change, "detail": self.detail}
        if self.renamed_to is not None:
            value["renamed_to"] = table_name(*split_table(self.renamed_to))
        return orjson.dumps(value)


def compare(
    known: dict[str, dict[str, Any]],
    current: dict[str, int | None],
    names_of: dict[int, str | None],
) -> tuple[list[TableChange], dict[str, dict[str, Any]]]:
    """What changed since ``known`` (name -> {oid, state}), given the ``current`` OID of
    each captured name and the ``names_of`` old OIDs now; returns the changes and the
    new ``known``."""
    changes: list[TableChange] = []
    out: dict[str, dict[str, Any]] = {}
    for name, oid in current.items():
        was = known.get(name)
        if was is None:
            if oid is not None:
                out[name] = {"oid": oid, "state": OK}
            continue
        old_oid, state = was.get("oid"), was.get("state", OK)
        if oid is not None:
            if oid != old_oid or state != OK:
                changes.append(TableChange(name, RECREATED, old_oid, oid))
            out[name] = {"oid": oid, "state": OK}
            continue
        if state != OK:  # already reported
            out[name] = was
            continue
        new_name = names_of.get(old_oid) if old_oid is not None else None
        if new_name is not None:
            changes.append(TableChange(name, RENAMED, old_oid, None, new_name))
            out[name] = {"oid": old_oid, "state": RENAMED, "renamed_to": new_name}
        else:
            changes.append(TableChange(name, DROPPED, old_oid, None))
            out[name] = {"oid": None, "state": DROPPED}
    return changes, out


def problems(known: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Captured tables (as events name them) gone under their name -> why."""
    out: dict[str, str] = {}
    for name, k in known.items():
        if k.get("state", OK) != OK:
            ch = TableChange(name, k["state"], k.get("oid"), None, k.get("renamed_to"))
            out[ch.name] = ch.detail
    return out
