"""Thin replication driver: a capture thread that reads the slot with psycopg2,
decodes with :class:`ChangeDecoder`, appends to the local log in batches and
confirms to PostgreSQL only what the log holds durably.

psycopg2's ``send_feedback`` only records positions unless ``force=True``; we
force it after each durable batch so a restart replays little. When every data
message is confirmed, psycopg2 moves the flush position to each keepalive's WAL
end by itself, which is safe: nothing unconfirmed lies before it.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extras

from .._errors import LeadershipLost, SourceError, StateError
from .._metrics import (
    CAPTURE_UNDECODABLE,
    CONFIRMED_LSN,
    EVENTS_PROCESSED,
    LOCAL_LOG_BYTES,
    REPLICATION_UP,
)
from .._record import OP_WATERMARK
from ..journal import FileSystem, JournalWriter, read_file, replace_file
from ._codec import codec_name
from ._decoder import ChangeDecoder, RelationInfo, Undecodable, encode_hint
from ._decoding import DecodedBatch, Decoding, InThread, InWorker
from ._protocol import Relation, format_lsn, parse_message
from ._setup import describe_relation

log = logging.getLogger("heliosdb_cdc.capture")


class CaptureDeadLetters(Protocol):
    """Where rows that cannot become events go (the service passes its state store)."""

    def add_capture_dead_letters(self, rows: list[tuple[str, int, str, str, bytes, str]]) -> None: ...

_TXN_ENDS = (b"C", b"c")  # Commit, Stream Commit
SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=3"


@dataclass
class CaptureStatus:
    connected: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    paused_reason: str | None = None
    # an error retrying cannot fix (the slot is gone): capture stopped, the service must too
    fatal: str | None = None
    # another instance leads capture now (journal.kafka): this one stopped, without confirming
    stepped_down: str | None = None
    received_lsn: int = 0
    confirmed_lsn: int = 0
    last_commit_ts_us: int = 0
    events: int = 0
    transactions: int = 0
    undecodable: int = 0
    started_at: float = field(default_factory=time.time)


class Capture:
    """Runs the capture thread. ``start()`` returns at once; ``stop()`` drains and joins."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        database: str,
        log_: JournalWriter,
        batch_size: int = 1000,
        poll_interval_ms: int = 50,
        max_log_bytes: int = 10 * 1024**3,
        streaming: bool = False,
        status_interval: float = 10.0,
        reconnect_max_delay: float = 30.0,
        decode_worker: bool = False,
        store: CaptureDeadLetters | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.database = database
        self.log = log_
        self.batch_size = batch_size
        self.poll_interval = poll_interval_ms / 1000.0
        self.max_log_bytes = max_log_bytes
        self.streaming = streaming
        self.status_interval = status_interval
        self.reconnect_max_delay = reconnect_max_delay
        self.decode_worker = decode_worker
        self.store = store  # where rows that cannot become events go (dead letters)
        self._noticed: set[str] = set()
        self.status = CaptureStatus()
        self.relations: dict[int, RelationInfo] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._catalog: Any = None  # a normal connection for catalog lookups
        self._metric_slot = slot

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heliosdb-cdc-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- thread ---------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
                if self._stop.is_set():
                    break
            except psycopg2.Error as exc:
                if _slot_missing(exc, self.slot):
                    from ._setup import lost_slot_error

                    self.status.fatal = str(lost_slot_error(self.slot))
                    self.status.last_error = self.status.fatal
                    self.status.last_error_at = time.time()
                    log.error("capture stopped: %s", self.status.fatal)
                    self._set_connected(False)
                    self._close_conn()
                    return
                self._retry_error(exc)
            except LeadershipLost as exc:
                self.status.stepped_down = str(exc)
                log.warning("capture stopped: %s", exc)
                return
            except (SourceError, StateError, OSError) as exc:
                self._retry_error(exc)
            except Exception:  # a bug must not kill capture silently
                log.exception("capture: unexpected error; retrying")
                self.status.last_error = "unexpected error (see log)"
                self.status.last_error_at = time.time()
            finally:
                self._set_connected(False)
                self._close_conn()
            if time.monotonic() - started > 30:
                delay = 0.5
            self._stop.wait(delay)
            delay = min(delay * 2, self.reconnect_max_delay)

    def _retry_error(self, exc: BaseException) -> None:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.status.last_error != msg:
            log.error("capture: %s; retrying with backoff", msg)
        self.status.last_error = msg
        self.status.last_error_at = time.time()

    def _set_connected(self, up: bool) -> None:
        if self.status.connected != up:
            log.info("replication connection %s (slot %s)", "up" if up else "down", self.slot)
        self.status.connected = up
        REPLICATION_UP.labels(self._metric_slot).set(1 if up else 0)

    def _close_conn(self) -> None:
        for conn in (self._conn, self._catalog):
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
        self._conn = None
        self._catalog = None

    def _relation_hint(self, payload: bytes, in_stream: bool) -> bytes | None:
        """The catalog's word on a relation (its real key, its user-defined types), for the
        decoder; None when the lookup fails (the decoder then uses the message alone)."""
        try:
            rel = parse_message(payload, in_stream)
            assert isinstance(rel, Relation)
            if self._catalog is None:
                self._catalog = psycopg2.connect(
                    self.dsn, connect_timeout=10, options="-c statement_timeout=10000"
                )
                self._catalog.autocommit = True
            hint = describe_relation(self._catalog, rel.oid, [c.type_oid for c in rel.columns])
            return encode_hint(hint)
        except Exception as exc:
            log.warning("capture: cannot read the catalog for a relation (%s); using the message alone", exc)
            if self._catalog is not None:
                try:
                    self._catalog.close()
                except Exception:
                    pass
                self._catalog = None
            return None

    def _session(self) -> None:
        self.log.rewind_uncommitted()
        conn = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            options=SESSION_OPTIONS,
            connect_timeout=10,
        )
        self._conn = conn
        cur = conn.cursor()
        # skip what the log already holds, fsynced or not: in this process the page
        # cache has it; after a crash, recovery has cut the log to what is durable
        pos = self.log.written
        schemas = self._load_schemas()
        # (the worker is started before replication, so "connected" means streaming)
        decoding: Decoding
        if self.decode_worker:
            decoding = InWorker(self.database, self.log.next_seq, pos.commit_lsn, schemas)
        else:
            decoder = ChangeDecoder(self.database, self.log.next_seq, pos.commit_lsn)
            decoder.relations = self.relations
            decoder.known_schemas = schemas
            decoding = InThread(decoder)
        try:
            self._stream(cur, decoding)
        finally:
            decoding.close()

    def _stream(self, cur: Any, decoding: Decoding) -> None:
        options = {"proto_version": "1", "publication_names": self.publication}
        if self.streaming:
            options.update(proto_version="2", streaming="on")
        if cur.connection.server_version >= 140000:
            options["messages"] = "true"  # snapshot watermarks (pg_logical_emit_message)
        cur.start_replication(
            slot_name=self.slot,
            decode=False,
            options=options,
            status_interval=self.status_interval,
        )
        self._set_connected(True)
        if self.status.last_error:
            log.info("capture resumed after: %s", self.status.last_error)
        self.status.last_error = None
        self._loop(cur, decoding)

    def _loop(self, cur: Any, decoding: Decoding) -> None:
        """Read payloads; decode them in batches (pipelined with a worker); write each
        decoded batch to the log, fsync, confirm."""
        payloads: list[bytes] = []
        inflight: deque[tuple[Future[DecodedBatch], int]] = deque()
        pending = 0  # payload bytes read but not yet in the log
        in_txn = False  # after the last batch written
        finishing = False  # the log is full: reading on to the end of the open transaction
        first_at = 0.0
        in_stream = False  # inside a streamed transaction's chunk (protocol v2)
        conn = cur.connection
        status = self.status

        def write_next() -> None:
            nonlocal pending, in_txn, finishing
            fut, nbytes = inflight.popleft()
            in_txn = self._write(cur, decoding.collect(fut))
            pending -= nbytes
            finishing = finishing and in_txn

        def submit() -> None:
            nonlocal payloads, first_at
            inflight.append((decoding.submit(payloads), sum(len(p) for p in payloads)))
            payloads = []
            first_at = 0.0

        while not self._stop.is_set():
            # pause only between transactions: the log rolls and is trimmed at their ends,
            # so pausing inside one could never free space (the limit is soft by one txn)
            if not finishing and self.log.size_bytes + pending > self.max_log_bytes:
                if payloads:
                    submit()
                if inflight:
                    write_next()
                    continue
                if not in_txn:
                    self._backpressure(cur)
                    continue
                finishing = True
            msg = cur.read_message()
            if msg is not None:
                status.received_lsn = msg.data_start
                kind = msg.payload[:1]
                if kind == b"R":
                    hint = self._relation_hint(msg.payload, in_stream)
                    if hint is not None:
                        payloads.append(hint)
                        pending += len(hint)  # a batch's bytes are subtracted whole when written
                elif kind == b"S" or kind == b"E":
                    in_stream = kind == b"S"
                payloads.append(msg.payload)
                pending += len(msg.payload)
                if finishing and msg.payload[:1] in _TXN_ENDS:
                    submit()  # the open transaction may end here: write it all, then pause
                    while inflight:
                        write_next()
                    continue
                if not first_at:
                    first_at = time.monotonic()
                if len(payloads) < self.batch_size and time.monotonic() - first_at < self.poll_interval:
                    if inflight and inflight[0][0].done():
                        write_next()
                    continue
            if payloads:
                submit()
                if len(inflight) > 2:  # bound the pipeline: at most 2 batches being decoded
                    write_next()
                continue
            if inflight:
                write_next()
                continue
            try:
                select.select([conn], [], [], min(self.poll_interval * 4, 0.5))
            except InterruptedError:
                pass
        while inflight:  # stopping: what was read and decoded still goes to the log
            write_next()

    def _write(self, cur: Any, batch: DecodedBatch) -> bool:
        """Append a decoded batch, fsync, confirm; return whether a transaction is open."""
        events = batch.events
        if batch.undecodable:
            self._dead_letter(batch.undecodable)  # before the log: the confirm covers them
        if batch.order:
            self.log.append(events, batch.commits, batch.order)
            pos = self.log.sync_to_disk()
        else:
            pos = self.log.durable
        if batch.schemas is not None:
            self._save_schemas(batch.schemas)
        for notice in batch.notices:
            if notice not in self._noticed:  # once per process, not per session
                self._noticed.add(notice)
                log.warning("%s", notice)
        if batch.commits:
            self.status.transactions += len(batch.commits)
            self.status.last_commit_ts_us = batch.commits[-1][3]
        per_table: dict[str, int] = {}
        for rec in events:
            if rec.op != OP_WATERMARK:
                per_table[rec.table] = per_table.get(rec.table, 0) + 1
        for table, n in per_table.items():
            EVENTS_PROCESSED.labels(table).inc(n)
        self.status.events += len(events)
        LOCAL_LOG_BYTES.set(self.log.size_bytes)
        if pos.end_lsn > self.status.confirmed_lsn:  # (a segment roll may have synced already)
            cur.send_feedback(write_lsn=pos.end_lsn, flush_lsn=pos.end_lsn, force=True)
            self.status.confirmed_lsn = pos.end_lsn
            CONFIRMED_LSN.labels(self._metric_slot).set(pos.end_lsn)
        return batch.in_transaction

    def _dead_letter(self, rows: list[Undecodable]) -> None:
        if self.store is not None:
            self.store.add_capture_dead_letters(
                [(r.event_id, r.commit_lsn, r.table, r.operation, r.payload, r.error) for r in rows]
            )
        else:  # no state database: the log is the only place left for them
            for r in rows:
                log.error("undecodable row %s (%s): raw message %s", r.event_id, r.error, r.payload.hex())
        for r in rows:
            CAPTURE_UNDECODABLE.labels(r.table).inc()
        self.status.undecodable += len(rows)

    @property
    def _schemas_path(self) -> Path:
        return self.log.dir / "schemas.json"

    def _load_schemas(self) -> dict[str, list[dict[str, Any]]]:
        """The table schemas capture last saw (to tell a SCHEMA_CHANGE); empty when the file
        is missing or unreadable: relations are then learned again from the stream (pgoutput
        describes each relation before its first change), with a warning."""
        return load_schemas(self.log.fs, self._schemas_path)

    def _save_schemas(self, schemas: dict[str, list[dict[str, Any]]]) -> None:
        """Written after the log is durable, so a replay never misses a SCHEMA_CHANGE;
        whole (fsynced, then renamed), so a power cut leaves the old file or the new."""
        replace_file(self.log.fs, self._schemas_path, orjson.dumps(schemas))

    def _backpressure(self, cur: Any) -> None:
        reason = (
            f"local log is full ({self.log.size_bytes} bytes > cdc.max_log_bytes="
            f"{self.max_log_bytes}); capture waits for streams to catch up"
        )
        if self.status.paused_reason != reason:
            log.warning("capture paused: %s", reason)
        self.status.paused_reason = reason
        cur.send_feedback(force=True)
        self._stop.wait(0.5)
        if self.log.size_bytes <= self.max_log_bytes:
            self.status.paused_reason = None
            log.info("capture resumed: local log below its limit")

    def describe(self) -> dict[str, Any]:
        s = self.status
        return {
            "connected": s.connected,
            "confirmed_lsn": format_lsn(s.confirmed_lsn),
            "received_lsn": format_lsn(s.received_lsn),
            "events": s.events,
            "transactions": s.transactions,
            "undecodable": s.undecodable,
            "last_error": s.last_error,
            "paused_reason": s.paused_reason,
            "codec": codec_name(),
        }


def _slot_missing(exc: psycopg2.Error, slot: str) -> bool:
    """The server says our replication slot does not exist (it was dropped)."""
    text = str(exc)
    return f'replication slot "{slot}" does not exist' in text


def load_schemas(fs: FileSystem, path: Path) -> dict[str, list[dict[str, Any]]]:
    """``schemas.json`` as saved; empty (logged) when missing, unreadable or not a schema map."""
    try:
        raw = read_file(fs, path)
    except OSError as exc:
        log.warning("capture: cannot read %s (%s); relations are learned again from the stream", path, exc)
        return {}
    if raw is None:
        return {}
    try:
        data = orjson.loads(raw)
    except ValueError as exc:
        data, problem = None, str(exc)
    else:
        problem = "not a JSON object of column lists"
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return data
    log.warning(
        "capture: %s is unreadable (%s); relations are learned again from the stream, and a "
        "schema change made while capture was stopped is not reported as SCHEMA_CHANGE",
        path,
        problem,
    )
    return {}
