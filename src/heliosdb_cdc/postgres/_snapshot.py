"""Initial snapshots and backfills with watermarks (the DBLog / Debezium
incremental-snapshot technique), without pausing the live stream.

For each chunk of a table, read in primary-key order:

1. write a *low* watermark into the WAL (``pg_logical_emit_message``);
2. ``SELECT`` the next ``chunk_size`` rows after the last key;
3. hand the rows to the stream runner, then write a *high* watermark.

The runner sees both watermarks in the local log, in WAL order, among the live
changes. It remembers which keys changed between them; at the high watermark it
drops those rows from the chunk (the live change is newer, or equal) and sends
the rest as ``READ`` events. A live change to a row is therefore never
overwritten by an older snapshot copy, and nothing is missed: a row is either in
the chunk or changed after the low watermark, and then delivered live.

Snapshots are capture: this module reads PostgreSQL and hands each chunk to the
``register`` callback it is given (the stream runner's), as a
:class:`~heliosdb_cdc.journal.Chunk`; it imports nothing from ``delivery/``.

Progress (last key per table) is stored after each chunk is delivered, so a
snapshot interrupted by a crash resumes with the next chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import psycopg2
from psycopg2 import sql

from .._errors import SourceError
from .._event import dumps, plain
from ..journal import Chunk
from ._decoder import WATERMARK_PREFIX, table_name
from ._replication import SESSION_OPTIONS
from ._setup import resolve_types, split_table, table_columns
from ._types import converter_for

log = logging.getLogger("heliosdb_cdc.snapshot")


class SnapshotState(Protocol):
    """Where a snapshot keeps its progress (the service passes its :class:`~heliosdb_cdc.store.Store`)."""

    def get_snapshot(self, stream: str) -> dict[str, Any] | None: ...

    def save_snapshot(self, stream: str, snap: dict[str, Any]) -> None: ...


class Snapshotter:
    """Runs one snapshot or backfill of a stream's tables."""

    def __init__(
        self,
        *,
        stream: str,
        kind: str,
        dsn: str,
        database: str,
        tables: list[str],
        store: SnapshotState,
        register: Callable[[Chunk], None],
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        where: str | None = None,
        chunk_size: int = 1000,
    ) -> None:
        self.stream = stream
        self.kind = kind
        self.dsn = dsn
        self.database = database
        self.tables = tables
        self.store = store
        self.register = register
        self.predicate = predicate
        self.where = where
        self.chunk_size = chunk_size
        self.state: dict[str, Any] = store.get_snapshot(stream) or {}
        if self.state.get("state") != "running" or self.state.get("kind") != kind:
            self.state = {
                "kind": kind,
                "tables": tables,
                "where": where,
                "state": "running",
                "progress": {},
                "rows_sent": 0,
                "started_at": time.time(),
            }
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.store.save_snapshot(self.stream, self.state)
        self._task = asyncio.create_task(self._run(), name=f"{self.stream}-{self.kind}")

    async def cancel(self) -> None:
        await self.stop()
        self.state["state"] = "cancelled"
        self.store.save_snapshot(self.stream, self.state)

    async def stop(self) -> None:
        """Stop without changing the stored state: a restart resumes it."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.state)

    async def _run(self) -> None:
        try:
            for table in self.state["tables"]:
                await self._table(table)
            self.state["state"] = "done"
            self.state["current_table"] = None
            log.info("%s of stream %s done: %d rows", self.kind, self.stream, self.state["rows_sent"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state["state"] = "failed"
            self.state["error"] = str(exc)
            log.error("%s of stream %s failed: %s", self.kind, self.stream, exc)
        self.store.save_snapshot(self.stream, self.state)

    def _connect(self) -> Any:
        try:
            conn = psycopg2.connect(self.dsn, options=SESSION_OPTIONS, connect_timeout=10)
        except psycopg2.OperationalError as exc:
            raise SourceError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from exc
        conn.autocommit = True
        return conn

    async def _table(self, table: str) -> None:
        conn = await asyncio.to_thread(self._connect)
        try:
            cols = await asyncio.to_thread(table_columns, conn, table)
            if conn.server_version < 180000:  # change events lack generated columns: so do reads
                cols = [c for c in cols if not c.get("generated")]
            resolved = await asyncio.to_thread(resolve_types, conn, [c["type_oid"] for c in cols])
            keys = [c for c in cols if c["key"]]
            if not keys:
                raise SourceError(
                    f"table {table} has no primary key: a snapshot reads in key order and needs one "
                    "(add a primary key, or use SNAPSHOT NONE)",
                    table=table,
                )
            schema, name = split_table(table)
            tname = table_name(schema, name)
            self.state["current_table"] = tname
            ident = sql.Identifier(schema, name)
            # qualified with the alias: ORDER BY "id" would sort the ::text output column
            select_list = sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier("t", c["name"])) for c in cols
            )
            key_list = sql.SQL(", ").join(sql.Identifier("t", c["name"]) for c in keys)
            key_params = sql.SQL(", ").join(sql.Placeholder() for _ in keys)
            converters = [converter_for(resolved[c["type_oid"]]) for c in cols]
            names = [c["name"] for c in cols]
            key_idx = [i for i, c in enumerate(cols) if c["key"]]
            while True:
                last = self.state["progress"].get(tname)
                if last is None:
                    query = sql.SQL("SELECT {} FROM {} AS t ORDER BY {} LIMIT {}").format(
                        select_list, ident, key_list, sql.Literal(self.chunk_size)
                    )
                    params: list[Any] = []
                else:
                    query = sql.SQL("SELECT {} FROM {} AS t WHERE ({}) > ({}) ORDER BY {} LIMIT {}").format(
                        select_list,
                        ident,
                        key_list,
                        key_params,
                        key_list,
                        sql.Literal(self.chunk_size),
                    )
                    params = list(last)
                watermark = uuid.uuid4().hex
                raw = await asyncio.to_thread(self._read_chunk, conn, query, params, watermark)
                rows: list[tuple[bytes, dict[str, Any]]] = []
                for r in raw:
                    value = {names[i]: (None if v is None else converters[i](v)) for i, v in enumerate(r)}
                    if self.predicate is not None and not self.predicate(
                        {"operation": "READ", "table": tname, "value": plain(value), "old_value": None}
                    ):
                        continue
                    key = {names[i]: value[names[i]] for i in key_idx}
                    rows.append((dumps(key), {"key": key, "value": value}))
                chunk = Chunk(watermark, tname, rows)
                self.register(chunk)
                await asyncio.to_thread(self._emit, conn, watermark, "high")
                sent = await chunk.done
                if raw:
                    self.state["progress"][tname] = [r[i] for i in key_idx]
                self.state["rows_sent"] += sent
                self.store.save_snapshot(self.stream, self.state)
                if len(raw) < self.chunk_size:
                    return
        finally:
            conn.close()

    def _emit(self, conn: Any, watermark: str, kind: str) -> None:
        payload = orjson.dumps({"stream": self.stream, "id": watermark, "kind": kind})
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_logical_emit_message(true, %s, %s::bytea)",
                (WATERMARK_PREFIX, payload),
            )

    def _read_chunk(self, conn: Any, query: Any, params: list[Any], watermark: str) -> list[tuple[Any, ...]]:
        self._emit(conn, watermark, "low")
        with conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())
