"""State in PostgreSQL (``state.url``): the SQLite store's tables in a schema of their own.

One connection behind a lock (callers are threads of ``asyncio.to_thread``); every method
is one transaction. A lost connection is a :class:`StateError` and the next call connects
again. Migrations are versioned in ``<schema>.schema_migrations`` and run on open, under a
transaction-level advisory lock so two processes starting together migrate once.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2.extensions import cursor as Cursor

from .._errors import CdcError, StateError, StreamExists, StreamNotFound
from ._sqlite import CAPTURE_STREAM, sink_mark_key

T = TypeVar("T")

DEFAULT_SCHEMA = "heliosdb_cdc"
SCHEMA_VERSION = 3
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# ``{s}`` is the quoted schema name. Version 1 holds what SQLite's version 2 holds, plus
# ``cursors.generation`` for fencing a capture that lost its lease (written, not yet checked).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text)",
        """CREATE TABLE {s}.streams (
            name text PRIMARY KEY,
            config text NOT NULL,
            state text NOT NULL DEFAULT 'running',
            origin text NOT NULL DEFAULT 'sql',
            created_at double precision NOT NULL,
            last_error text,
            last_error_at double precision
        )""",
        """CREATE TABLE {s}.cursors (
            stream text PRIMARY KEY,
            seq bigint NOT NULL,
            updated_at double precision NOT NULL,
            generation bigint NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE {s}.deliveries (
            endpoint text NOT NULL,
            event_id text NOT NULL,
            seq bigint NOT NULL,
            delivered_at double precision NOT NULL,
            PRIMARY KEY (endpoint, event_id)
        )""",
        "CREATE INDEX deliveries_time ON {s}.deliveries (delivered_at)",
        "CREATE INDEX deliveries_seq ON {s}.deliveries (endpoint, seq)",
        """CREATE TABLE {s}.dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream text NOT NULL,
            endpoint text NOT NULL,
            event_id text NOT NULL,
            seq bigint NOT NULL,
            table_name text NOT NULL,
            operation text NOT NULL,
            event_key bytea NOT NULL,
            body bytea NOT NULL,
            error text,
            attempts integer NOT NULL,
            first_attempt_at double precision NOT NULL,
            last_attempt_at double precision NOT NULL
        )""",
        "CREATE INDEX dead_letters_stream ON {s}.dead_letters (stream)",
        """CREATE TABLE {s}.snapshots (
            stream text PRIMARY KEY,
            kind text NOT NULL,
            tables text NOT NULL,
            where_clause text,
            state text NOT NULL,
            progress text NOT NULL DEFAULT '{}',
            rows_sent bigint NOT NULL DEFAULT 0,
            started_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            error text
        )""",
    ],
    # the default event of a dead letter whose body the stream's format made (replay formats it again)
    2: ["ALTER TABLE {s}.dead_letters ADD COLUMN event bytea"],
    3: [
        # delivery workers: one cursor per (stream, partition of its keys)
        """CREATE TABLE {s}.partition_cursors (
            stream text NOT NULL,
            part integer NOT NULL,
            seq bigint NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (stream, part)
        )""",
    ],
}

_STREAM_COLS = "name, config, state, origin, created_at, last_error, last_error_at"
_SNAPSHOT_COLS = "kind, tables, where_clause, state, progress, rows_sent, started_at, updated_at, error"
_DL_LIST = ["id", "stream", "endpoint", "event_id", "seq", "table", "operation", "error", "attempts"]
_DL_TIMES = ["first_attempt_at", "last_attempt_at"]


def redact_url(url: str) -> str:
    """``postgresql://user@host:port/db``: where the state is, never the password."""
    try:
        p = psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        return "postgresql://(unparsable url)"
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', '')}{port}/{p.get('dbname', '')}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class PostgresStore:
    """The state in a schema (default ``heliosdb_cdc``) of a PostgreSQL database."""

    def __init__(self, url: str, schema: str = DEFAULT_SCHEMA) -> None:
        self.url = redact_url(url)
        if not IDENTIFIER.fullmatch(schema):
            raise StateError(
                f"state schema {schema!r} must be a lowercase identifier: letters, digits, underscore",
                state=self.url,
            )
        self.schema = schema
        self._dsn = url
        self._s = f'"{schema}"'
        self._lock = threading.RLock()
        self._conn: psycopg2.extensions.connection | None = None
        # the capture generation written with every cursor (fencing, docs/deployment.md)
        self.generation = 0
        try:
            self._connect()
        except psycopg2.Error as exc:
            raise StateError(f"cannot open the state database: {_one_line(exc)}", state=self.url) from exc
        self._tx("cannot migrate the state database", self._migrate)

    # -- connection ----------------------------------------------------------------
    def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(
            self._dsn,
            connect_timeout=10,
            application_name="heliosdb-cdc state",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            with conn.cursor() as cur:
                # a commit is durable when it returns, whatever the server's default
                cur.execute("SET synchronous_commit = on")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _tx(self, what: str, fn: Callable[[Cursor], T], **context: Any) -> T:
        """Run ``fn`` in one transaction; database errors become StateError(what: ...)."""
        with self._lock:
            try:
                conn = self._conn if self._conn is not None and not self._conn.closed else self._connect()
            except psycopg2.Error as exc:
                self._conn = None
                raise StateError(f"{what}: {_one_line(exc)}", state=self.url, **context) from exc
            try:
                with conn.cursor() as cur:
                    result = fn(cur)
                conn.commit()
                return result
            except CdcError:
                self._rollback(conn)
                raise
            except (psycopg2.Error, TypeError, ValueError, IndexError) as exc:
                self._rollback(conn)
                raise StateError(f"{what}: {_one_line(exc)}", state=self.url, **context) from exc

    def _rollback(self, conn: psycopg2.extensions.connection) -> None:
        try:
            conn.rollback()
        except psycopg2.Error:  # the connection is gone: the next call opens another
            conn.close()
            self._conn = None

    def _q(self, sql: str) -> str:
        return sql.replace("{s}", self._s)

    # -- schema ----------------------------------------------------------------------
    def _migrate(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"heliosdb_cdc migrate {self.schema}",))
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
        if cur.fetchone() is None:  # CREATE SCHEMA IF NOT EXISTS needs CREATE even when it exists
            cur.execute(self._q("CREATE SCHEMA {s}"))
        cur.execute(
            self._q(
                "CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        cur.execute(self._q("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"))
        current = int(cur.fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StateError(
                f"the state database has schema version {current}, newer than this "
                f"heliosdb-cdc understands ({SCHEMA_VERSION}); upgrade the package",
                state=self.url,
                schema=self.schema,
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[version]:
                cur.execute(self._q(stmt))
            cur.execute(self._q("INSERT INTO {s}.schema_migrations (version) VALUES (%s)"), (version,))

    @property
    def schema_version(self) -> int:
        def read(cur: Cursor) -> int:
            cur.execute(self._q("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"))
            return int(cur.fetchone()[0])

        return self._tx("state database error", read)

    @property
    def instance_id(self) -> str:
        """A random id of this state: names what it owns elsewhere (Kafka offsets)."""

        def read(cur: Cursor) -> str:
            cur.execute(
                self._q("INSERT INTO {s}.meta VALUES ('instance_id', %s) ON CONFLICT DO NOTHING"),
                (uuid.uuid4().hex[:12],),
            )
            cur.execute(self._q("SELECT value FROM {s}.meta WHERE key = 'instance_id'"))
            return str(cur.fetchone()[0])

        return self._tx("state database error", read)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement; its rows (or ``[(rowcount,)]`` for a statement without rows)."""

        def run(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(self._q(sql), params)
            return cur.fetchall() if cur.description else [(cur.rowcount,)]

        return self._tx("state database error", run)

    # -- catalog -----------------------------------------------------------------
    def create_stream(self, name: str, config: dict[str, Any], origin: str, state: str) -> None:
        def run(cur: Cursor) -> None:
            try:
                cur.execute(
                    self._q(
                        "INSERT INTO {s}.streams (name, config, state, origin, created_at) "
                        "VALUES (%s,%s,%s,%s,%s)"
                    ),
                    (name, orjson.dumps(config).decode(), state, origin, time.time()),
                )
            except psycopg2.errors.UniqueViolation:
                raise StreamExists(f"stream {name!r} already exists", stream=name) from None
            # a worker's checkpoint that landed after an earlier stream of this name was dropped
            cur.execute(self._q("DELETE FROM {s}.partition_cursors WHERE stream=%s"), (name,))

        self._tx("state database error", run, stream=name)

    def update_stream_config(self, name: str, config: dict[str, Any]) -> None:
        self._exec("UPDATE {s}.streams SET config=%s WHERE name=%s", (orjson.dumps(config).decode(), name))

    def get_stream(self, name: str) -> dict[str, Any]:
        rows = self._exec(f"SELECT {_STREAM_COLS} FROM {{s}}.streams WHERE name=%s", (name,))
        if not rows:
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name)
        return self._row(rows[0])

    @staticmethod
    def _row(row: Sequence[Any]) -> dict[str, Any]:
        keys = ("name", "config", "state", "origin", "created_at", "last_error", "last_error_at")
        out = dict(zip(keys, row, strict=True))
        out["config"] = orjson.loads(row[1])
        return out

    def list_streams(self) -> list[dict[str, Any]]:
        rows = self._exec(f"SELECT {_STREAM_COLS} FROM {{s}}.streams ORDER BY created_at, name")
        return [self._row(r) for r in rows]

    def has_stream(self, name: str) -> bool:
        """Whether the stream exists: one primary-key lookup."""
        return bool(self._exec("SELECT 1 FROM {s}.streams WHERE name=%s", (name,)))

    def stream_names(self) -> list[str]:
        """Names of every stream (no configuration parsed), in catalog order."""
        return [r[0] for r in self._exec("SELECT name FROM {s}.streams ORDER BY created_at, name")]

    def set_state(self, name: str, state: str) -> None:
        if self._exec("UPDATE {s}.streams SET state=%s WHERE name=%s", (state, name))[0][0] == 0:
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name)

    def set_error(self, name: str, error: str | None) -> None:
        self._exec(
            "UPDATE {s}.streams SET last_error=%s, last_error_at=%s WHERE name=%s",
            (error, time.time() if error else None, name),
        )

    def drop_stream(self, name: str) -> None:
        def run(cur: Cursor) -> None:
            cur.execute(self._q("DELETE FROM {s}.streams WHERE name=%s"), (name,))
            if cur.rowcount == 0:
                raise StreamNotFound(f"stream {name!r} does not exist", stream=name)
            cur.execute(self._q("DELETE FROM {s}.cursors WHERE stream=%s"), (name,))
            cur.execute(self._q("DELETE FROM {s}.partition_cursors WHERE stream=%s"), (name,))
            cur.execute(self._q("DELETE FROM {s}.snapshots WHERE stream=%s"), (name,))
            cur.execute(self._q("DELETE FROM {s}.meta WHERE key=%s"), (sink_mark_key(name),))

        self._tx("state database error", run, stream=name)

    # -- cursors and delivery records -------------------------------------------------
    def get_cursor(self, stream: str) -> int | None:
        rows = self._exec("SELECT seq FROM {s}.cursors WHERE stream=%s", (stream,))
        return int(rows[0][0]) if rows else None

    def all_cursors(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._exec("SELECT stream, seq FROM {s}.cursors")}

    def checkpoint(
        self,
        stream: str,
        seq: int,
        deliveries: Iterable[tuple[str, str, int, float]] = (),
        meta: Mapping[str, str] | None = None,
        partitions: Sequence[int] = (),
    ) -> None:
        """One transaction: the stream's cursor plus a batch of (endpoint, event_id, seq, time),
        and ``meta`` values that go with the cursor (a sink's resume mark). With
        ``partitions``, the cursor of each of those partitions of the stream instead."""
        rows = [tuple(r) for r in deliveries]
        for r in rows:
            if len(r) != 4:
                raise StateError(
                    f"cannot write a checkpoint: a delivery record has {len(r)} values, not 4 "
                    "(endpoint, event_id, seq, time)",
                    stream=stream,
                )

        def run(cur: Cursor) -> None:
            if rows:
                psycopg2.extras.execute_values(
                    cur,
                    self._q(
                        "INSERT INTO {s}.deliveries (endpoint, event_id, seq, delivered_at) "
                        "VALUES %s ON CONFLICT DO NOTHING"
                    ),
                    rows,
                    page_size=1000,
                )
            if partitions:
                now = time.time()
                psycopg2.extras.execute_values(
                    cur,
                    self._q(
                        "INSERT INTO {s}.partition_cursors (stream, part, seq, updated_at) VALUES %s "
                        "ON CONFLICT (stream, part) DO UPDATE SET seq=excluded.seq, "
                        "updated_at=excluded.updated_at"
                    ),
                    [(stream, p, seq, now) for p in partitions],
                )
            else:
                self._write_cursor(cur, stream, seq)
            if meta:
                psycopg2.extras.execute_values(
                    cur,
                    self._q(
                        "INSERT INTO {s}.meta (key, value) VALUES %s "
                        "ON CONFLICT (key) DO UPDATE SET value=excluded.value"
                    ),
                    list(meta.items()),
                )

        self._tx("cannot write a checkpoint", run, stream=stream)

    def _write_cursor(self, cur: Cursor, stream: str, seq: int) -> None:
        cur.execute(
            self._q(
                "INSERT INTO {s}.cursors (stream, seq, updated_at, generation) VALUES (%s,%s,%s,%s) "
                "ON CONFLICT (stream) DO UPDATE SET seq=excluded.seq, "
                "updated_at=excluded.updated_at, generation=excluded.generation"
            ),
            (stream, seq, time.time(), self.generation),
        )

    def partition_cursors(self, stream: str) -> dict[int, int]:
        rows = self._exec("SELECT part, seq FROM {s}.partition_cursors WHERE stream=%s", (stream,))
        return {int(r[0]): int(r[1]) for r in rows}

    def fold_partition_cursors(self, stream: str, seq: int) -> None:
        """One transaction: the stream's cursor becomes ``seq``; its partition cursors go."""

        def run(cur: Cursor) -> None:
            self._write_cursor(cur, stream, seq)
            cur.execute(self._q("DELETE FROM {s}.partition_cursors WHERE stream=%s"), (stream,))

        self._tx("cannot write a checkpoint", run, stream=stream)

    def sync_to_disk(self) -> None:
        """Nothing to do: every commit is flushed (``synchronous_commit = on``) when it returns."""

    def delivered_after(self, endpoint: str, seq: int) -> set[str]:
        rows = self._exec("SELECT event_id FROM {s}.deliveries WHERE endpoint=%s AND seq>%s", (endpoint, seq))
        return {r[0] for r in rows}

    def was_delivered(self, event_id: str, endpoint: str, window_secs: float | None = None) -> bool:
        since = float("-inf") if window_secs is None else time.time() - window_secs
        rows = self._exec(
            "SELECT 1 FROM {s}.deliveries WHERE endpoint=%s AND event_id=%s AND delivered_at>=%s",
            (endpoint, event_id, since),
        )
        return bool(rows)

    def prune_deliveries(self, older_than_secs: float) -> int:
        cutoff = time.time() - older_than_secs
        rows = self._exec("DELETE FROM {s}.deliveries WHERE delivered_at < %s", (cutoff,))
        return int(rows[0][0])

    # -- dead letters ------------------------------------------------------------
    def add_dead_letters(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """rows: (stream, endpoint, event_id, seq, table, operation, key, body, error,
        attempts, first_attempt_at, last_attempt_at[, event]); ``event``: the default event
        when ``body`` is its formatted form (debezium, cloudevents), else None."""

        def run(cur: Cursor) -> None:
            values = [
                (
                    *r[:6],
                    psycopg2.Binary(r[6]),
                    psycopg2.Binary(r[7]),
                    *r[8:12],
                    psycopg2.Binary(r[12]) if len(r) > 12 and r[12] is not None else None,
                )
                for r in rows
            ]
            psycopg2.extras.execute_values(
                cur,
                self._q(
                    "INSERT INTO {s}.dead_letters (stream, endpoint, event_id, seq, table_name, "
                    "operation, event_key, body, error, attempts, first_attempt_at, "
                    "last_attempt_at, event) VALUES %s"
                ),
                values,
            )

        self._tx("cannot record dead letters", run)

    def add_capture_dead_letters(self, rows: Sequence[tuple[str, int, str, str, bytes, str]]) -> None:
        """Rows capture could not turn into events: (event_id, commit_lsn, table, operation,
        raw pgoutput message, error), under the stream ``(capture)``; a row read again after
        a restart is recorded once."""
        now = time.time()

        def run(cur: Cursor) -> None:
            for eid, lsn, table, op, raw, error in rows:
                cur.execute(
                    self._q(
                        "INSERT INTO {s}.dead_letters (stream, endpoint, event_id, seq, table_name, "
                        "operation, event_key, body, error, attempts, first_attempt_at, "
                        "last_attempt_at) SELECT %s,'capture',%s,%s,%s,%s,%s,%s,%s,1,%s,%s "
                        "WHERE NOT EXISTS (SELECT 1 FROM {s}.dead_letters WHERE stream=%s AND event_id=%s)"
                    ),
                    (
                        CAPTURE_STREAM,
                        eid,
                        lsn,
                        table,
                        op,
                        psycopg2.Binary(b""),
                        psycopg2.Binary(raw),
                        error,
                        now,
                        now,
                        CAPTURE_STREAM,
                        eid,
                    ),
                )

        self._tx("cannot record dead letters", run)

    def list_dead_letters(self, stream: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, stream, endpoint, event_id, seq, table_name, operation, error, attempts, "
            "first_attempt_at, last_attempt_at FROM {s}.dead_letters"
        )
        params: tuple[Any, ...] = ()
        if stream:
            sql += " WHERE stream=%s"
            params = (stream,)
        sql += " ORDER BY id LIMIT %s"
        cols = _DL_LIST + _DL_TIMES
        return [dict(zip(cols, r, strict=True)) for r in self._exec(sql, (*params, limit))]

    def get_dead_letter(self, dl_id: int) -> dict[str, Any] | None:
        rows = self._exec(
            "SELECT id, stream, endpoint, event_id, seq, table_name, operation, event_key, body, "
            "error, attempts, first_attempt_at, last_attempt_at, event FROM {s}.dead_letters WHERE id=%s",
            (dl_id,),
        )
        if not rows:
            return None
        cols = [*_DL_LIST[:7], "key", "body", *_DL_LIST[7:], *_DL_TIMES, "event"]
        out = dict(zip(cols, rows[0], strict=True))
        out["key"], out["body"] = bytes(out["key"]), bytes(out["body"])
        if out["event"] is not None:
            out["event"] = bytes(out["event"])
        return out

    def delete_dead_letters(self, ids: Sequence[int] | None = None, stream: str | None = None) -> int:
        if ids is not None:
            rows = self._exec("DELETE FROM {s}.dead_letters WHERE id = ANY(%s)", (list(ids),))
        elif stream:
            rows = self._exec("DELETE FROM {s}.dead_letters WHERE stream=%s", (stream,))
        else:
            rows = self._exec("DELETE FROM {s}.dead_letters")
        return int(rows[0][0])

    def count_dead_letters(self, stream: str | None = None) -> int:
        if stream:
            return int(self._exec("SELECT count(*) FROM {s}.dead_letters WHERE stream=%s", (stream,))[0][0])
        return int(self._exec("SELECT count(*) FROM {s}.dead_letters")[0][0])

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per stream (streams with none are absent), in one query."""
        rows = self._exec("SELECT stream, count(*) FROM {s}.dead_letters GROUP BY stream")
        return {r[0]: int(r[1]) for r in rows}

    # -- snapshots and backfills -------------------------------------------------------
    def save_snapshot(self, stream: str, snap: dict[str, Any]) -> None:
        self._exec(
            "INSERT INTO {s}.snapshots (stream, kind, tables, where_clause, state, progress, "
            "rows_sent, started_at, updated_at, error) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (stream) DO UPDATE SET kind=excluded.kind, tables=excluded.tables, "
            "where_clause=excluded.where_clause, state=excluded.state, progress=excluded.progress, "
            "rows_sent=excluded.rows_sent, updated_at=excluded.updated_at, error=excluded.error",
            (
                stream,
                snap["kind"],
                orjson.dumps(snap["tables"]).decode(),
                snap.get("where"),
                snap["state"],
                orjson.dumps(snap.get("progress", {})).decode(),
                snap.get("rows_sent", 0),
                snap.get("started_at", time.time()),
                time.time(),
                snap.get("error"),
            ),
        )

    def get_snapshot(self, stream: str) -> dict[str, Any] | None:
        rows = self._exec(f"SELECT {_SNAPSHOT_COLS} FROM {{s}}.snapshots WHERE stream=%s", (stream,))
        return self._snapshot(rows[0]) if rows else None

    def all_snapshots(self) -> dict[str, dict[str, Any]]:
        """The stored snapshot of every stream that has one, in one query."""
        rows = self._exec(f"SELECT {_SNAPSHOT_COLS}, stream FROM {{s}}.snapshots")
        return {r[9]: self._snapshot(r) for r in rows}

    @staticmethod
    def _snapshot(row: Sequence[Any]) -> dict[str, Any]:
        return {
            "kind": row[0],
            "tables": orjson.loads(row[1]),
            "where": row[2],
            "state": row[3],
            "progress": orjson.loads(row[4]),
            "rows_sent": row[5],
            "started_at": row[6],
            "updated_at": row[7],
            "error": row[8],
        }

    def delete_snapshot(self, stream: str) -> None:
        self._exec("DELETE FROM {s}.snapshots WHERE stream=%s", (stream,))

    # -- small facts about the source (the slot we created, captured tables' OIDs) --
    def get_meta(self, key: str) -> str | None:
        rows = self._exec("SELECT value FROM {s}.meta WHERE key=%s", (key,))
        return None if not rows else str(rows[0][0])

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM {s}.meta WHERE key=%s", (key,))
        else:
            self._exec(
                "INSERT INTO {s}.meta (key, value) VALUES (%s,%s) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
