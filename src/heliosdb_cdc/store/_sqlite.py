"""State in an embedded SQLite database (WAL mode): catalog, cursors, delivery
records and dead letters. Every write is batched by its caller; nothing here
runs per event."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from .._errors import StateError, StreamExists, StreamNotFound

SCHEMA_VERSION = 4
CAPTURE_STREAM = "(capture)"  # dead letters of rows capture could not turn into events

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE streams (
            name TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'running',
            origin TEXT NOT NULL DEFAULT 'sql',
            created_at REAL NOT NULL,
            last_error TEXT,
            last_error_at REAL
        )""",
        """CREATE TABLE cursors (
            stream TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE deliveries (
            endpoint TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            delivered_at REAL NOT NULL,
            PRIMARY KEY (endpoint, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX deliveries_time ON deliveries (delivered_at)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            stream TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            table_name TEXT NOT NULL,
            operation TEXT NOT NULL,
            event_key BLOB NOT NULL,
            body BLOB NOT NULL,
            error TEXT,
            attempts INTEGER NOT NULL,
            first_attempt_at REAL NOT NULL,
            last_attempt_at REAL NOT NULL
        )""",
        "CREATE INDEX dead_letters_stream ON dead_letters (stream)",
    ],
    2: [
        """CREATE TABLE snapshots (
            stream TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            tables TEXT NOT NULL,
            where_clause TEXT,
            state TEXT NOT NULL,
            progress TEXT NOT NULL DEFAULT '{}',
            rows_sent INTEGER NOT NULL DEFAULT 0,
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            error TEXT
        )""",
    ],
    # the default event of a dead letter whose body the stream's format made (replay formats it again)
    3: ["ALTER TABLE dead_letters ADD COLUMN event BLOB"],
    4: [
        # delivery workers: one cursor per (stream, partition of its keys)
        """CREATE TABLE partition_cursors (
            stream TEXT NOT NULL,
            part INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (stream, part)
        ) WITHOUT ROWID""",
    ],
}


def sink_mark_key(stream: str) -> str:
    """Meta key of a stream's sink resume mark (Kinesis: where to read after a restart)."""
    return f"sink_mark:{stream}"


class SQLiteStore:
    """Thread-safe wrapper around one SQLite connection."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "state.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database: {exc}", path=str(self.path)) from exc
        self._lock = threading.RLock()
        self._migrate()

    # -- schema ----------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StateError(
                    f"the state database has schema version {current}, newer than this "
                    f"heliosdb-cdc understands ({SCHEMA_VERSION}); upgrade the package",
                    path=str(self.path),
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _MIGRATIONS[version]:
                        self._db.execute(stmt)
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),)
                    )
                    self._db.execute("COMMIT")
                except Exception:
                    self._db.execute("ROLLBACK")
                    raise

    @property
    def instance_id(self) -> str:
        """A random id of this state directory: names what it owns elsewhere (Kafka offsets)."""
        import uuid

        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='instance_id'").fetchone()
            if row is None:
                value = uuid.uuid4().hex[:12]
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('instance_id', ?)", (value,))
                row = self._db.execute("SELECT value FROM meta WHERE key='instance_id'").fetchone()
        return str(row[0])

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise StateError(f"state database error: {exc}", path=str(self.path)) from exc

    # -- catalog -----------------------------------------------------------------
    def create_stream(self, name: str, config: dict[str, Any], origin: str, state: str) -> None:
        try:
            self._exec(
                "INSERT INTO streams (name, config, state, origin, created_at) VALUES (?,?,?,?,?)",
                (name, orjson.dumps(config).decode(), state, origin, time.time()),
            )
        except sqlite3.IntegrityError:
            raise StreamExists(f"stream {name!r} already exists", stream=name) from None
        # a worker's checkpoint that landed after an earlier stream of this name was dropped
        self._exec("DELETE FROM partition_cursors WHERE stream=?", (name,))

    def update_stream_config(self, name: str, config: dict[str, Any]) -> None:
        self._exec("UPDATE streams SET config=? WHERE name=?", (orjson.dumps(config).decode(), name))

    def get_stream(self, name: str) -> dict[str, Any]:
        row = self._exec(
            "SELECT name, config, state, origin, created_at, last_error, last_error_at "
            "FROM streams WHERE name=?",
            (name,),
        ).fetchone()
        if row is None:
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name)
        return self._row(row)

    @staticmethod
    def _row(row: Sequence[Any]) -> dict[str, Any]:
        return {
            "name": row[0],
            "config": orjson.loads(row[1]),
            "state": row[2],
            "origin": row[3],
            "created_at": row[4],
            "last_error": row[5],
            "last_error_at": row[6],
        }

    def list_streams(self) -> list[dict[str, Any]]:
        rows = self._exec(
            "SELECT name, config, state, origin, created_at, last_error, last_error_at "
            "FROM streams ORDER BY created_at, name"
        ).fetchall()
        return [self._row(r) for r in rows]

    def has_stream(self, name: str) -> bool:
        """Whether the stream exists: one primary-key lookup."""
        return self._exec("SELECT 1 FROM streams WHERE name=?", (name,)).fetchone() is not None

    def stream_names(self) -> list[str]:
        """Names of every stream (no configuration parsed), in catalog order."""
        rows = self._exec("SELECT name FROM streams ORDER BY created_at, name").fetchall()
        return [r[0] for r in rows]

    def set_state(self, name: str, state: str) -> None:
        cur = self._exec("UPDATE streams SET state=? WHERE name=?", (state, name))
        if cur.rowcount == 0:
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name)

    def set_error(self, name: str, error: str | None) -> None:
        self._exec(
            "UPDATE streams SET last_error=?, last_error_at=? WHERE name=?",
            (error, time.time() if error else None, name),
        )

    def drop_stream(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("DELETE FROM streams WHERE name=?", (name,))
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    raise StreamNotFound(f"stream {name!r} does not exist", stream=name)
                self._db.execute("DELETE FROM cursors WHERE stream=?", (name,))
                self._db.execute("DELETE FROM partition_cursors WHERE stream=?", (name,))
                self._db.execute("DELETE FROM snapshots WHERE stream=?", (name,))
                self._db.execute("DELETE FROM meta WHERE key=?", (sink_mark_key(name),))
                self._db.execute("COMMIT")
            except StreamNotFound:
                raise
            except Exception:
                self._db.execute("ROLLBACK")
                raise

    # -- cursors and delivery records -------------------------------------------------
    def get_cursor(self, stream: str) -> int | None:
        row = self._exec("SELECT seq FROM cursors WHERE stream=?", (stream,)).fetchone()
        return int(row[0]) if row else None

    def all_cursors(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._exec("SELECT stream, seq FROM cursors").fetchall()}

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
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO deliveries (endpoint, event_id, seq, delivered_at) "
                    "VALUES (?,?,?,?)",
                    deliveries,
                )
                if partitions:
                    self._db.executemany(
                        "INSERT INTO partition_cursors (stream, part, seq, updated_at) VALUES (?,?,?,?) "
                        "ON CONFLICT(stream, part) DO UPDATE SET seq=excluded.seq, "
                        "updated_at=excluded.updated_at",
                        [(stream, p, seq, now) for p in partitions],
                    )
                else:
                    self._db.execute(
                        "INSERT INTO cursors (stream, seq, updated_at) VALUES (?,?,?) "
                        "ON CONFLICT(stream) DO UPDATE SET seq=excluded.seq, "
                        "updated_at=excluded.updated_at",
                        (stream, seq, now),
                    )
                if meta:
                    self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", meta.items())
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StateError(f"cannot write a checkpoint: {exc}", stream=stream) from exc

    def partition_cursors(self, stream: str) -> dict[int, int]:
        rows = self._exec("SELECT part, seq FROM partition_cursors WHERE stream=?", (stream,)).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def fold_partition_cursors(self, stream: str, seq: int) -> None:
        """One transaction: the stream's cursor becomes ``seq``; its partition cursors go."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT INTO cursors (stream, seq, updated_at) VALUES (?,?,?) "
                    "ON CONFLICT(stream) DO UPDATE SET seq=excluded.seq, updated_at=excluded.updated_at",
                    (stream, seq, time.time()),
                )
                self._db.execute("DELETE FROM partition_cursors WHERE stream=?", (stream,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StateError(f"cannot write a checkpoint: {exc}", stream=stream) from exc

    def sync_to_disk(self) -> None:
        """Make every committed transaction durable.

        With ``synchronous=NORMAL`` a commit survives a crash of the process but not
        a power cut until SQLite's next WAL checkpoint; callers that delete data on the
        strength of a committed cursor (log retention) call this first.
        """
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def delivered_after(self, endpoint: str, seq: int) -> set[str]:
        rows = self._exec(
            "SELECT event_id FROM deliveries WHERE endpoint=? AND seq>?", (endpoint, seq)
        ).fetchall()
        return {r[0] for r in rows}

    def was_delivered(self, event_id: str, endpoint: str, window_secs: float | None = None) -> bool:
        if window_secs is None:
            row = self._exec(
                "SELECT 1 FROM deliveries WHERE endpoint=? AND event_id=?", (endpoint, event_id)
            ).fetchone()
        else:
            row = self._exec(
                "SELECT 1 FROM deliveries WHERE endpoint=? AND event_id=? AND delivered_at>=?",
                (endpoint, event_id, time.time() - window_secs),
            ).fetchone()
        return row is not None

    def prune_deliveries(self, older_than_secs: float) -> int:
        cur = self._exec("DELETE FROM deliveries WHERE delivered_at < ?", (time.time() - older_than_secs,))
        return cur.rowcount

    # -- dead letters ------------------------------------------------------------
    def add_dead_letters(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """rows: (stream, endpoint, event_id, seq, table, operation, key, body, error,
        attempts, first_attempt_at, last_attempt_at[, event]); ``event``: the default event
        when ``body`` is its formatted form (debezium, cloudevents), else None."""
        with self._lock:
            try:
                self._db.executemany(
                    "INSERT INTO dead_letters (stream, endpoint, event_id, seq, table_name, "
                    "operation, event_key, body, error, attempts, first_attempt_at, "
                    "last_attempt_at, event) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [r if len(r) == 13 else (*r, None) for r in rows],
                )
            except sqlite3.Error as exc:
                raise StateError(f"cannot record dead letters: {exc}") from exc

    def add_capture_dead_letters(self, rows: Sequence[tuple[str, int, str, str, bytes, str]]) -> None:
        """Rows capture could not turn into events: (event_id, commit_lsn, table, operation,
        raw pgoutput message, error), under the stream ``(capture)`` (no stream's yet). A row
        read again after a restart is recorded once."""
        now = time.time()
        with self._lock:
            try:
                self._db.executemany(
                    "INSERT INTO dead_letters (stream, endpoint, event_id, seq, table_name, "
                    "operation, event_key, body, error, attempts, first_attempt_at, "
                    "last_attempt_at) SELECT ?,?,?,?,?,?,?,?,?,?,?,? WHERE NOT EXISTS "
                    "(SELECT 1 FROM dead_letters WHERE stream=? AND event_id=?)",
                    [
                        (
                            CAPTURE_STREAM,
                            "capture",
                            eid,
                            lsn,
                            table,
                            op,
                            b"",
                            raw,
                            error,
                            1,
                            now,
                            now,
                            CAPTURE_STREAM,
                            eid,
                        )
                        for eid, lsn, table, op, raw, error in rows
                    ],
                )
            except sqlite3.Error as exc:
                raise StateError(f"cannot record dead letters: {exc}") from exc

    def list_dead_letters(self, stream: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, stream, endpoint, event_id, seq, table_name, operation, error, attempts, "
            "first_attempt_at, last_attempt_at FROM dead_letters"
        )
        params: tuple[Any, ...] = ()
        if stream:
            sql += " WHERE stream=?"
            params = (stream,)
        sql += " ORDER BY id LIMIT ?"
        cols = [
            "id",
            "stream",
            "endpoint",
            "event_id",
            "seq",
            "table",
            "operation",
            "error",
            "attempts",
            "first_attempt_at",
            "last_attempt_at",
        ]
        return [dict(zip(cols, r, strict=True)) for r in self._exec(sql, (*params, limit)).fetchall()]

    def get_dead_letter(self, dl_id: int) -> dict[str, Any] | None:
        row = self._exec(
            "SELECT id, stream, endpoint, event_id, seq, table_name, operation, event_key, body, "
            "error, attempts, first_attempt_at, last_attempt_at, event FROM dead_letters WHERE id=?",
            (dl_id,),
        ).fetchone()
        if row is None:
            return None
        cols = [
            "id",
            "stream",
            "endpoint",
            "event_id",
            "seq",
            "table",
            "operation",
            "key",
            "body",
            "error",
            "attempts",
            "first_attempt_at",
            "last_attempt_at",
            "event",
        ]
        return dict(zip(cols, row, strict=True))

    def delete_dead_letters(self, ids: Sequence[int] | None = None, stream: str | None = None) -> int:
        if ids is not None:
            with self._lock:
                cur = self._db.executemany("DELETE FROM dead_letters WHERE id=?", [(i,) for i in ids])
                return cur.rowcount
        if stream:
            return self._exec("DELETE FROM dead_letters WHERE stream=?", (stream,)).rowcount
        return self._exec("DELETE FROM dead_letters").rowcount

    def count_dead_letters(self, stream: str | None = None) -> int:
        if stream:
            return int(
                self._exec("SELECT count(*) FROM dead_letters WHERE stream=?", (stream,)).fetchone()[0]
            )
        return int(self._exec("SELECT count(*) FROM dead_letters").fetchone()[0])

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters per stream (streams with none are absent), in one query."""
        rows = self._exec("SELECT stream, count(*) FROM dead_letters GROUP BY stream").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    # -- snapshots and backfills -------------------------------------------------------
    def save_snapshot(self, stream: str, snap: dict[str, Any]) -> None:
        self._exec(
            "INSERT INTO snapshots (stream, kind, tables, where_clause, state, progress, rows_sent, "
            "started_at, updated_at, error) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(stream) DO UPDATE SET kind=excluded.kind, tables=excluded.tables, "
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
        row = self._exec(
            "SELECT kind, tables, where_clause, state, progress, rows_sent, started_at, updated_at, "
            "error FROM snapshots WHERE stream=?",
            (stream,),
        ).fetchone()
        return None if row is None else self._snapshot(row)

    def all_snapshots(self) -> dict[str, dict[str, Any]]:
        """The stored snapshot of every stream that has one, in one query."""
        rows = self._exec(
            "SELECT kind, tables, where_clause, state, progress, rows_sent, started_at, updated_at, "
            "error, stream FROM snapshots"
        ).fetchall()
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
        self._exec("DELETE FROM snapshots WHERE stream=?", (stream,))

    # -- small facts about the source (the slot we created, captured tables' OIDs) --
    def get_meta(self, key: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM meta WHERE key=?", (key,))
        else:
            self._exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
