"""The catalog: the streams the service runs and the tables they capture.

* the streams declared in the configuration (``streams``, ``webhooks``) reconciled
  with the state directory's catalog at start (:meth:`Catalog.reconcile_config`);
* the publication kept to exactly the tables the streams name (:meth:`Catalog.sync_publication`
  at start, :meth:`Catalog.publish` for one stream's share on CREATE and DROP);
* the captured tables followed by name: dropped, renamed, re-created (``_tables.py``
  compares, :meth:`Catalog.check_tables` reads and repairs);
* a stream's filters and transformation compiled (:meth:`Catalog.compile`).

:class:`~heliosdb_cdc._service.WebhookServer` owns one ``Catalog`` and asks it; the
catalog holds what it learned (pattern warnings, generated columns events lack, tables
gone under their name) for the stream status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ._config import Config, Destination, FilterConfig, StreamConfig, WebhookRegistration
from ._errors import CdcError, SourceError, StreamExists, StreamNotFound
from ._input import pattern_warnings
from ._metrics import TABLE_CHANGES, TABLE_MISSING
from .pipeline import check_stream_format
from .postgres import (
    PublishedTables,
    alter_publication,
    connect,
    emit_table_change,
    ensure_publication,
    relation_names,
    resolve_tables,
    split_table,
    table_columns,
    table_oids,
    unpublished_columns,
)
from .store import Store

log = logging.getLogger("heliosdb_cdc")


def stream_to_json(cfg: StreamConfig) -> dict[str, Any]:
    """Catalog form of a stream: secrets kept (the catalog is local state)."""
    data = cfg.model_dump(mode="json")
    data["secret"] = cfg.secret.get_secret_value() if cfg.secret else None
    return data


def registration_stream(reg: WebhookRegistration, index: int | None = None) -> StreamConfig:
    name = reg.name if reg.name is not None else _registration_name(reg.url)
    return StreamConfig(
        name=name,
        tables=reg.tables or ["*"],
        destination=Destination(type="webhook", address=reg.url),
        secret=reg.secret,
        operations=reg.operations,
        filters=reg.filters,
        format=reg.format,
    )


def _registration_name(url: str) -> str:
    from urllib.parse import urlsplit

    host = re.sub(r"[^a-z0-9]+", "_", (urlsplit(url).hostname or "webhook").lower()).strip("_")[:100]
    return f"webhook_{host}_{hashlib.sha1(url.encode()).hexdigest()[:6]}"


class Catalog:
    """Streams and captured tables; ``backfill(table)`` re-reads a re-created table for
    the streams that name it (the service's snapshots do that); ``connect(dsn)`` opens a
    connection to the source (the service's: one way its catalog work is opened)."""

    def __init__(
        self,
        config: Config,
        backfill: Callable[[str], Awaitable[None]],
        connect: Callable[[str], Any] = connect,
    ) -> None:
        self.config = config
        self._backfill = backfill
        self._connect = connect
        self._store: Store | None = None
        self._table_columns: dict[str, list[dict[str, Any]]] = {}
        self.unpublished: dict[str, list[str]] = {}  # table -> generated columns events lack
        self.table_warnings: dict[str, list[str]] = {}
        self._published = PublishedTables()
        # stream -> the tables it names (not patterns): followed by name, see check_tables
        self._named: dict[str, frozenset[str]] = {}
        # captured tables gone under their name (dropped, renamed) -> why; see _tables.py
        self.table_problems: dict[str, str] = {}

    def open(self, store: Store) -> None:
        """Use ``store`` (the state directory's catalog, opened at start)."""
        self._store = store

    @property
    def store(self) -> Store:
        assert self._store is not None, "the catalog is used before the service started"
        return self._store

    @property
    def dsn(self) -> str:
        return self.config.source.dsn.get_secret_value()

    async def reconcile_config(self, last_seq: int) -> None:
        """Create, update and remove the streams the configuration declares (``origin``
        config) so the catalog matches it; a new stream starts at ``last_seq``."""
        declared = [*self.config.streams]
        declared += [registration_stream(r) for r in self.config.webhooks]
        existing = {r["name"]: r for r in self.store.list_streams()}
        created, updated, removed = [], [], []
        for cfg in declared:
            data = stream_to_json(cfg)
            row = existing.get(cfg.name)
            if row is None:
                try:
                    self.store.create_stream(cfg.name, data, "config", "running")
                except StreamExists:  # another instance on the same state created it just now
                    row = self.store.get_stream(cfg.name)
                else:
                    self.store.checkpoint(cfg.name, last_seq)
                    created.append(cfg.name)
            if row is not None and row["config"] != data:
                self.store.update_stream_config(cfg.name, data)
                updated.append(cfg.name)
        names = {c.name for c in declared}
        for name, row in existing.items():
            if row["origin"] == "config" and name not in names:
                with contextlib.suppress(StreamNotFound):  # another instance dropped it just now
                    self.store.drop_stream(name)
                removed.append(name)
        if created or updated or removed:
            log.info(
                "configuration reconciled with the catalog: created %s, updated %s, removed %s",
                created or "-",
                updated or "-",
                removed or "-",
            )

    def tables_of(self, cfg: StreamConfig) -> list[str]:
        """The stream's tables (a named table that does not exist is a SourceError); notes
        a warning for each pattern that matches no table now (blocking)."""
        conn = self._connect(self.dsn)
        try:
            resolved = {name: resolve_tables(conn, [name]) for name in dict.fromkeys(cfg.tables)}
        finally:
            conn.close()
        self.table_warnings[cfg.name] = pattern_warnings(cfg.tables, resolved)
        return sorted({t for found in resolved.values() for t in found})

    async def sync_publication(self) -> None:
        """At start: make the publication hold exactly the wanted tables (one pass over the
        catalog); CREATE and DROP then change only their stream's share (:meth:`publish`)."""
        rows = self.store.list_streams()
        conn = await asyncio.to_thread(self._connect, self.dsn)
        try:
            cache: dict[str, list[str]] = {}
            pinned = await asyncio.to_thread(_resolve_each, conn, self.config.source.tables, cache)
            published = PublishedTables(pinned)
            for row in rows:
                names = row["config"]["tables"]
                published.add(row["name"], await asyncio.to_thread(_resolve_each, conn, names, cache))
            await asyncio.to_thread(
                ensure_publication, conn, self.config.source.publication, sorted(published.wanted())
            )
            self._published = published
            self._named = {row["name"]: _named_tables(row["config"]["tables"]) for row in rows}
            self.table_warnings = {  # patterns that match no table now (stream status)
                row["name"]: pattern_warnings(row["config"]["tables"], cache) for row in rows
            }
            self.unpublished = await asyncio.to_thread(unpublished_columns, conn, sorted(published.wanted()))
            for table, cols in self.unpublished.items():
                log.warning(
                    "table %s: generated column(s) %s are not in its events (PostgreSQL before 18 "
                    "does not publish them)",
                    table,
                    ", ".join(cols),
                )
        finally:
            conn.close()

    def publish(self, stream: str, tables: list[str] | None) -> None:
        """Add ``stream``'s tables to the publication (``tables`` None: forget the stream and
        drop the tables no other stream needs). Touches only those tables (blocking)."""
        if tables is None:
            add, drop = [], self._published.remove(stream)
            self.table_warnings.pop(stream, None)
        else:
            add, drop = self._published.add(stream, tables), []
        if not add and not drop:
            return
        conn = self._connect(self.dsn)
        try:
            alter_publication(conn, self.config.source.publication, add=add, drop=drop)
            if add:
                self.unpublished.update(unpublished_columns(conn, add))
        finally:
            conn.close()

    def stream_tables(self, cfg: StreamConfig) -> list[str]:
        """The stream's tables as ``schema.table``; a name that resolves to nothing is
        logged and skipped, like at start (blocking)."""
        conn = self._connect(self.dsn)
        try:
            cache: dict[str, list[str]] = {}
            tables = _resolve_each(conn, cfg.tables, cache)
            self.table_warnings[cfg.name] = pattern_warnings(cfg.tables, cache)
            return tables
        finally:
            conn.close()

    def columns_of(self, table: str) -> list[dict[str, Any]]:
        cols = self._table_columns.get(table)
        if cols is None:
            conn = self._connect(self.dsn)
            try:
                cols = table_columns(conn, table)
            finally:
                conn.close()
            self._table_columns[table] = cols
        return cols

    # -- filters and transformations -----------------------------------------------------
    def _filters_for(self, cfg: StreamConfig) -> list[FilterConfig]:
        """Top-level filters naming one of the stream's tables, then the stream's own."""
        out: list[FilterConfig] = []
        stream_tables = {t.removeprefix("public.") for t in cfg.tables}
        for f in self.config.filters:
            ft = {t.removeprefix("public.") for t in f.tables}
            if not ft or ft & stream_tables or "*" in stream_tables:
                out.append(f)
        out.extend(cfg.filters)
        return out

    def compile(self, cfg: StreamConfig, endpoint: str) -> tuple[Any, Any]:
        filters = self._filters_for(cfg)
        predicate = None
        if filters:
            from .pipeline import FilterChain, compile_filter

            chain = FilterChain([compile_filter(f) for f in filters])
            predicate = chain.passes
        transform = None
        for t in self.config.transformations:
            if t.target in (endpoint, cfg.name, cfg.destination.address):
                from .pipeline import compile_transformation

                transform = compile_transformation(t).apply
                break
        check_stream_format(cfg, self.config.webhook.batch_size, transform is not None)
        return predicate, transform

    # -- captured tables dropped, renamed, re-created (followed by name) -------------------
    def _followed_tables(self) -> list[str]:
        """``schema.table`` of every table a stream names (patterns are not followed); from
        memory, kept up to date by CREATE and DROP: no catalog read."""
        return sorted(_named_tables(self.config.source.tables).union(*self._named.values()))

    def follow(self, stream: str, tables: list[str] | None) -> None:
        if tables is None:
            self._named.pop(stream, None)
        else:
            self._named[stream] = _named_tables(tables)

    async def check_tables_logged(self) -> None:
        try:
            await self.check_tables()
        except CdcError as exc:
            log.warning("checking the captured tables: %s", exc)

    async def check_tables(self) -> None:
        """Compare the captured tables' OIDs with the last check; report and repair."""
        from ._tables import RECREATED, compare, problems

        names = self._followed_tables()
        known: dict[str, dict[str, Any]] = orjson.loads(self.store.get_meta("tables") or "{}")

        def read() -> tuple[dict[str, int | None], dict[int, str | None]]:
            conn = self._connect(self.dsn)
            try:
                current = table_oids(conn, names)
                lost = [
                    k["oid"]
                    for n, k in known.items()
                    if k.get("oid") is not None and current.get(n) != k["oid"]
                ]
                return current, relation_names(conn, lost)
            finally:
                conn.close()

        current, names_of = await asyncio.to_thread(read)
        changes, now = compare(known, current, names_of)
        for ch in changes:
            log.warning("%s", ch.detail)
            TABLE_CHANGES.labels(ch.name, ch.change).inc()
            await asyncio.to_thread(self._emit_table_change, ch.message())
        back = [ch for ch in changes if ch.change == RECREATED]
        if back:
            await self.sync_publication()  # before the backfill: its watermarks need the table
            for ch in back:
                await self._backfill(ch.table)
        if changes or now != known:
            self.store.set_meta("tables", orjson.dumps(now).decode())
        self.table_problems = problems(now)
        for name in names:
            TABLE_MISSING.labels(name.removeprefix("public.")).set(
                1 if name.removeprefix("public.") in self.table_problems else 0
            )

    def _emit_table_change(self, content: bytes) -> None:
        conn = self._connect(self.dsn)
        try:
            emit_table_change(conn, content)
        finally:
            conn.close()

    def table_problem(self, cfg: dict[str, Any]) -> str | None:
        for t in cfg["tables"]:
            problem = self.table_problems.get(t.removeprefix("public."))
            if problem:
                return problem
        return None


def _named_tables(names: list[str]) -> frozenset[str]:
    """``schema.table`` of the names that are not patterns."""
    return frozenset(".".join(split_table(n)) for n in names if not any(c in n for c in "*?["))


def _resolve_each(conn: Any, names: list[str], cache: dict[str, list[str]]) -> list[str]:
    """Resolve each table name (``cache``: name -> tables, shared across streams); a name
    that fails is logged as not captured and skipped."""
    out: set[str] = set()
    for name in names:
        found = cache.get(name)
        if found is None:
            try:
                found = resolve_tables(conn, [name])
            except SourceError as exc:
                log.warning("%s: not captured", exc)
                found = []
            cache[name] = found
        out.update(found)
    return sorted(out)
