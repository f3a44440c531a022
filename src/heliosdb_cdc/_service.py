"""The running service: wires capture, the local log, streams, sinks and the HTTP API.

:class:`WebhookServer` is the guide's ``WebhookServer``: build it from a
:class:`Config`, ``async with`` it (or ``await start()`` / ``await stop()``),
``await register(WebhookRegistration(...))``. The CLI's ``run`` command uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr, ValidationError

from ._config import (
    Config,
    Destination,
    FilterConfig,
    StreamConfig,
    WebhookConfig,
    WebhookRegistration,
    load_config,
)
from ._errors import (
    CdcError,
    ConfigError,
    SourceError,
    SourceFatalError,
    SqlError,
    StreamExists,
    StreamNotFound,
)
from ._event import OperationType
from ._input import check_stream, pattern_warnings
from ._metrics import (
    SLOT_LAG_BYTES,
    SLOT_LAG_SECONDS,
    SLOT_RETAINED_BYTES,
    TABLE_CHANGES,
    TABLE_MISSING,
    forget_stream,
)
from .delivery import (
    CircuitBreakerRegistry,
    PartitionSet,
    RemoteStream,
    StreamRunner,
    WorkerSupervisor,
    fold_cursors,
    make_router,
)
from .journal import LocalLog
from .pipeline import build_formatter, check_stream_format, content_types
from .postgres import (
    Capture,
    PublishedTables,
    alter_publication,
    check_server,
    connect,
    debezium_column_rows,
    emit_table_change,
    ensure_publication,
    ensure_slot,
    format_lsn,
    relation_names,
    resolve_tables,
    slot_stats,
    split_table,
    table_columns,
    table_oids,
    unpublished_columns,
)
from .sinks import Sink, WebhookSink, validate_webhook_stream, webhook_security_kwargs
from .store import Store, open_store

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


class ExactlyOnce:
    """The guide's ``exactly_once``: ``await was_delivered(event_id, url)``."""

    def __init__(self, store: Store, window_secs: int) -> None:
        self._store = store
        self._window = window_secs
        self._pending: Callable[[str, str], bool] | None = None

    async def was_delivered(self, event_id: str, webhook_url: str) -> bool:
        if self._pending is not None and self._pending(event_id, webhook_url):
            return True
        return await asyncio.to_thread(self._store.was_delivered, event_id, webhook_url, self._window)


class WebhookServer:
    """The heliosdb-cdc service."""

    def __init__(self, config: Config | WebhookConfig | str | Path | None = None, **overrides: Any) -> None:
        if config is None:
            config = Config()
        elif isinstance(config, (str, Path)):
            config = load_config(config)
        elif isinstance(config, WebhookConfig):
            config = Config(webhook=config)
        if overrides:
            try:
                config = Config.model_validate({**config.model_dump(mode="python"), **overrides})
            except ValidationError as exc:
                raise ConfigError(str(exc)) from None
        self.config: Config = config
        self.store: Store | None = None
        self.log: LocalLog | None = None
        self.capture: Capture | None = None
        self.runners: dict[str, StreamRunner | RemoteStream] = {}
        # delivery.workers >= 2: webhook streams are delivered in worker processes
        self.supervisor: WorkerSupervisor | None = None
        self.circuit_breaker = CircuitBreakerRegistry(config.webhook.circuit_breaker)
        self.exactly_once: ExactlyOnce | None = None
        self.started_at = time.time()
        self.slot_info: dict[str, Any] = {}
        self.source_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._semaphore = asyncio.Semaphore(config.webhook.max_concurrent_requests)
        self._http: Any = None
        self._table_columns: dict[str, list[dict[str, Any]]] = {}
        self.unpublished: dict[str, list[str]] = {}  # table -> generated columns events lack
        self.snapshots: dict[str, Any] = {}
        self.table_warnings: dict[str, list[str]] = {}
        self._published = PublishedTables()
        # stream -> the tables it names (not patterns): followed by name, see _check_tables
        self._named: dict[str, frozenset[str]] = {}
        self._started = False
        # an error retrying cannot fix, found while running (a dropped slot): ``run`` exits on it
        self.fatal_error: SourceFatalError | None = None
        self.failed = asyncio.Event()
        self._resnapshot = False
        # captured tables gone under their name (dropped, renamed) -> why; see _tables.py
        self.table_problems: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------
    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def dsn(self) -> str:
        return self.config.source.dsn.get_secret_value()

    @property
    def ready(self) -> bool:
        """Started, and no error retrying cannot fix."""
        return self._started and self.fatal_error is None

    async def start(self, serve_http: bool = True, *, resnapshot: bool = False) -> None:
        """Start; ``resnapshot`` re-reads every captured table once (the way on after a lost slot)."""
        self._resnapshot = resnapshot
        try:
            await self._start(serve_http)
        except BaseException:
            await self.stop()  # the HTTP listener, the local log and the store are open
            raise

    async def _start(self, serve_http: bool) -> None:
        cfg = self.config
        if serve_http:
            from .server import check_http_security

            check_http_security(cfg)  # tokens required off loopback; TLS files load
        self.store = open_store(cfg)
        self.exactly_once = ExactlyOnce(self.store, cfg.webhook.exactly_once.window_secs)
        self.log = LocalLog(
            cfg.log_dir,
            segment_bytes=cfg.cdc.segment_bytes,
            memory_events=cfg.cdc.memory_queue_events,
        )
        pos = self.log.open()
        self.log.bind_loop(asyncio.get_running_loop())
        log.info(
            "local log %s: %d events, last transaction %s",
            self.log.dir,
            pos.seq,
            format_lsn(pos.end_lsn),
        )
        await self._reconcile_config()
        if serve_http:
            from .server import start_http

            # /health answers (503, with the reason) while the source is retried
            self._http = await start_http(self)
        await self._prepare_source()
        self.capture = Capture(
            dsn=self.dsn,
            slot=cfg.source.slot,
            publication=cfg.source.publication,
            database=cfg.database,
            log_=self.log,
            batch_size=cfg.cdc.batch_size,
            poll_interval_ms=cfg.cdc.poll_interval_ms,
            max_log_bytes=cfg.cdc.max_log_bytes,
            streaming=cfg.source.streaming,
            status_interval=cfg.source.status_interval_secs,
            reconnect_max_delay=cfg.source.reconnect_max_delay_secs,
            decode_worker=cfg.cdc.decode_worker,
            store=self.store,
        )
        self._loop = asyncio.get_running_loop()
        self.capture.start()
        await self._start_workers()
        for row in self.store.list_streams():
            await self._start_runner(row)
            snap = self.store.get_snapshot(row["name"])
            if snap and snap["state"] == "running":
                log.info("resuming the %s of stream %s", snap["kind"], row["name"])
                try:
                    await self.start_snapshot(row["name"], snap["kind"], snap["where"])
                except SqlError as exc:  # e.g. delivered by workers: no snapshots there
                    log.error("stream %s: %s", row["name"], exc)
                    self.store.set_error(row["name"], str(exc))
        if self._resnapshot:
            await self._start_resnapshot()
        await self._check_tables_logged()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._started = True
        log.info("heliosdb-cdc running: %d stream(s)", len(self.runners))

    async def stop(self) -> None:
        """Drain in-flight deliveries, checkpoint, stop capture."""
        for snap in self.snapshots.values():
            await snap.stop()
        self.snapshots.clear()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        self.runners.clear()
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self.capture is not None:
            await asyncio.to_thread(self.capture.stop)
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self.log is not None:
            self.log.close()
        if self.store is not None:
            self.store.close()
        self._started = False

    # -- source ------------------------------------------------------------------
    async def _prepare_source(self) -> None:
        """Check the server, the slot and the publication; retry with backoff while the
        error is transient. Errors retrying cannot fix (:class:`SourceFatalError`) end it."""
        delay = 0.5
        last = None
        while True:
            try:
                await asyncio.to_thread(self._prepare_source_sync, False)
                # the publication before the slot: pgoutput reads it as of each change, and a
                # change between the slot's start and the publication's creation (any write to
                # the source, the state's own when it lives there) fails decoding for good
                await self._sync_publication()
                await asyncio.to_thread(self._prepare_source_sync, True)
                self.source_error = None
                return
            except SourceFatalError as exc:
                self.source_error = str(exc)
                raise
            except SourceError as exc:
                msg = str(exc)
                if msg != last:
                    log.error("%s; retrying with backoff", msg)
                    last = msg
                self.source_error = msg
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.source.reconnect_max_delay_secs)

    def _prepare_source_sync(self, slot: bool) -> None:
        conn = connect(self.dsn)
        try:
            check_server(conn)
            if slot:
                self._check_slot(conn)
        finally:
            conn.close()

    def _check_slot(self, conn: Any) -> None:
        """Create the slot, unless this state directory read from it before: then a missing
        slot means the changes committed since it went are lost, and we refuse to go on."""
        assert self.store is not None and self.log is not None
        slot = self.config.source.slot
        key = f"slot:{slot}"
        known = self.store.get_meta(key)
        if known is None and self.log.durable.end_lsn > 0:
            known = format_lsn(self.log.durable.end_lsn)  # a state directory from before the marker
        if ensure_slot(conn, slot, create=known is None or self._resnapshot):
            if known is not None:
                log.warning(
                    "replication slot %s was missing and is created again; the captured tables "
                    "are re-read with a snapshot (--resnapshot)",
                    slot,
                )
            self.store.set_meta(key, format_lsn(self.log.durable.end_lsn) or "created")
        elif known is None:
            self.store.set_meta(key, format_lsn(self.log.durable.end_lsn) or "existing")

    async def _start_resnapshot(self) -> None:
        """``run --resnapshot``: a snapshot of every stream's tables, alongside the live stream."""
        assert self.store is not None
        for row in self.store.list_streams():
            if "*" in row["config"]["tables"]:
                log.warning("stream %s captures every table ('*'): not re-read", row["name"])
                continue
            try:
                await self.start_snapshot(row["name"], "snapshot", None)
            except CdcError as exc:
                log.error("re-reading stream %s: %s", row["name"], exc)
                self.store.set_error(row["name"], f"--resnapshot: {exc}")

    def _tables_of(self, cfg: StreamConfig) -> list[str]:
        """The stream's tables (a named table that does not exist is a SourceError); notes
        a warning for each pattern that matches no table now (blocking)."""
        conn = connect(self.dsn)
        try:
            resolved = {name: resolve_tables(conn, [name]) for name in dict.fromkeys(cfg.tables)}
        finally:
            conn.close()
        self.table_warnings[cfg.name] = pattern_warnings(cfg.tables, resolved)
        return sorted({t for found in resolved.values() for t in found})

    async def _sync_publication(self) -> None:
        """At start: make the publication hold exactly the wanted tables (one pass over the
        catalog); CREATE and DROP then change only their stream's share (:meth:`_publish`)."""
        assert self.store is not None
        rows = self.store.list_streams()
        conn = await asyncio.to_thread(connect, self.dsn)
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
            self.unpublished = await asyncio.to_thread(
                unpublished_columns, conn, sorted(published.wanted())
            )
            for table, cols in self.unpublished.items():
                log.warning(
                    "table %s: generated column(s) %s are not in its events (PostgreSQL before 18 "
                    "does not publish them)",
                    table,
                    ", ".join(cols),
                )
        finally:
            conn.close()

    def _publish(self, stream: str, tables: list[str] | None) -> None:
        """Add ``stream``'s tables to the publication (``tables`` None: forget the stream and
        drop the tables no other stream needs). Touches only those tables (blocking)."""
        if tables is None:
            add, drop = [], self._published.remove(stream)
            self.table_warnings.pop(stream, None)
        else:
            add, drop = self._published.add(stream, tables), []
        if not add and not drop:
            return
        conn = connect(self.dsn)
        try:
            alter_publication(conn, self.config.source.publication, add=add, drop=drop)
            if add:
                self.unpublished.update(unpublished_columns(conn, add))
        finally:
            conn.close()

    def _stream_tables(self, cfg: StreamConfig) -> list[str]:
        """The stream's tables as ``schema.table``; a name that resolves to nothing is
        logged and skipped, like at start (blocking)."""
        conn = connect(self.dsn)
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
            conn = connect(self.dsn)
            try:
                cols = table_columns(conn, table)
            finally:
                conn.close()
            self._table_columns[table] = cols
        return cols

    # -- catalog reconciliation --------------------------------------------------------
    async def _reconcile_config(self) -> None:
        assert self.store is not None
        declared = [*self.config.streams]
        declared += [registration_stream(r) for r in self.config.webhooks]
        existing = {r["name"]: r for r in self.store.list_streams()}
        created, updated, removed = [], [], []
        for cfg in declared:
            data = stream_to_json(cfg)
            row = existing.get(cfg.name)
            if row is None:
                self.store.create_stream(cfg.name, data, "config", "running")
                self.store.checkpoint(cfg.name, self.log.last_seq if self.log else 0)
                created.append(cfg.name)
            elif row["config"] != data:
                self.store.update_stream_config(cfg.name, data)
                updated.append(cfg.name)
        names = {c.name for c in declared}
        for name, row in existing.items():
            if row["origin"] == "config" and name not in names:
                self.store.drop_stream(name)
                removed.append(name)
        if created or updated or removed:
            log.info(
                "configuration reconciled with the catalog: created %s, updated %s, removed %s",
                created or "-",
                updated or "-",
                removed or "-",
            )

    # -- runners -----------------------------------------------------------------
    def _build_sink(self, cfg: StreamConfig) -> tuple[Sink, str]:
        dest = cfg.destination
        wh = self.config.webhook
        if dest.type == "webhook":
            secrets = []
            if cfg.secret is not None and cfg.secret.get_secret_value():
                secrets = [s.strip() for s in cfg.secret.get_secret_value().split(",")]
            sink = WebhookSink(
                dest.address,
                secrets,
                name=cfg.name,
                lanes=wh.worker_pool_size,
                batch_size=int(dest.options.get("batch_size", wh.batch_size)),
                timeout_secs=wh.timeout_secs,
                max_concurrent_requests=wh.max_concurrent_requests,
                semaphore=self._semaphore,
                max_payload_bytes=wh.max_payload_bytes,
                **webhook_security_kwargs(cfg, self.config),  # signature scheme, TLS, SSRF guard
                **content_types(cfg.format),  # CloudEvents: application/cloudevents+json
            )
            return sink, dest.address
        if dest.type == "kafka":
            from .sinks import KafkaSink

            # the transactional id and offsets key name this state directory's stream, so two
            # deployments (or a wiped state directory) never resume from each other's position
            assert self.store is not None
            sink_name = f"{cfg.name}-{self.store.instance_id}"
            return KafkaSink(dest, sink_name, format=cfg.format), f"kafka://{dest.address}/{dest.topic}"
        if dest.type == "kinesis":
            from .sinks import KinesisSink

            return KinesisSink.for_stream(cfg), f"kinesis://{dest.region}/{dest.address}"
        from .sinks import MemorySink

        return MemorySink(cfg.name, keep=bool(dest.options.get("keep", True))), f"memory://{cfg.name}"

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

    def _compile(self, cfg: StreamConfig, endpoint: str) -> tuple[Any, Any]:
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

    async def _start_workers(self) -> None:
        """``delivery.workers`` >= 2: start the worker processes (before the streams).
        Partition cursors that cannot be used as they are fold into one first."""
        assert self.store is not None and self.log is not None
        workers, partitions = self.config.delivery.workers, self.config.cdc.partitions
        names = self.store.stream_names()
        await asyncio.to_thread(fold_cursors, self.store, names, partitions if workers > 1 else None)
        if workers > 1:
            self.supervisor = WorkerSupervisor(
                self.config,
                self.log,
                self.store,
                build_partition_runner,
                workers=workers,
                partitions=partitions,
            )
            await self.supervisor.start()

    async def _start_runner(self, row: dict[str, Any]) -> StreamRunner | RemoteStream:
        assert self.store is not None and self.log is not None
        cfg = StreamConfig.model_validate(row["config"])
        if self.supervisor is not None and self.supervisor.takes(cfg.destination.type):
            sink, endpoint = self._build_sink(cfg)
            await sink.start()  # for replaying dead letters from here; delivery is in the workers
            if self.store.get_cursor(cfg.name) is None:
                self.store.checkpoint(cfg.name, self.log.last_seq)
            breaker = self.circuit_breaker.breaker(endpoint)
            remote = await asyncio.to_thread(self.supervisor.start_stream, row, sink, endpoint, breaker)
            self.runners[cfg.name] = remote
            return remote
        runner = self._new_runner(row)
        cursor = self.store.get_cursor(cfg.name)
        if cursor is None:
            cursor = self.log.last_seq
            self.store.checkpoint(cfg.name, cursor)
        if row["state"] == "paused":
            runner.pause()
        await runner.start(cursor)
        self.runners[cfg.name] = runner
        return runner

    def _new_runner(self, row: dict[str, Any], partitions: PartitionSet | None = None) -> StreamRunner:
        """The stream's runner, not started (``partitions``: in a delivery worker)."""
        assert self.store is not None and self.log is not None
        cfg = StreamConfig.model_validate(row["config"])
        sink, endpoint = self._build_sink(cfg)
        predicate, transform = self._compile(cfg, endpoint)
        ops = {o.value for o in cfg.operations} or None
        runner = StreamRunner(
            cfg.name,
            sink,
            self.log,
            self.store,
            endpoint=endpoint,
            breaker=self.circuit_breaker.breaker(endpoint),
            retry=self.config.webhook.retry,
            exactly_once=self.config.webhook.exactly_once,
            route=make_router(set(cfg.tables) if "*" not in cfg.tables else None, ops),
            predicate=predicate,
            transform=transform,
            needs_event=sink.needs_event,
            formatter=build_formatter(
                cfg.format,
                cfg.destination.type,
                cfg.destination.options,
                functools.partial(debezium_column_rows, self.dsn),
                self.config.database,
            ),
            checkpoint_interval=self.config.cdc.checkpoint_interval,
            poll_interval=self.config.cdc.poll_interval_ms / 1000.0,
            partitions=partitions,
        )
        runner.config = cfg  # type: ignore[attr-defined]
        return runner

    # -- housekeeping -----------------------------------------------------------------
    async def _housekeeping(self) -> None:
        assert self.store is not None and self.log is not None
        last_prune = 0.0
        while True:
            await asyncio.sleep(2.0)
            fatal = self.capture.status.fatal if self.capture is not None else None
            if fatal and self.fatal_error is None:
                self.fail(SourceFatalError(fatal))
            try:
                await self.trim_log()
                if time.time() - last_prune > 300:
                    eo = self.config.webhook.exactly_once
                    await asyncio.to_thread(self.store.prune_deliveries, eo.retention_secs or eo.window_secs)
                    last_prune = time.time()
                await self._refresh_slot_stats()
                await self._check_tables()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("housekeeping: %s", exc)

    # -- captured tables dropped, renamed, re-created (followed by name) -------------------
    def _followed_tables(self) -> list[str]:
        """``schema.table`` of every table a stream names (patterns are not followed); from
        memory, kept up to date by CREATE and DROP: no catalog read."""
        return sorted(_named_tables(self.config.source.tables).union(*self._named.values()))

    def _follow(self, stream: str, tables: list[str] | None) -> None:
        if tables is None:
            self._named.pop(stream, None)
        else:
            self._named[stream] = _named_tables(tables)

    async def _check_tables_logged(self) -> None:
        try:
            await self._check_tables()
        except CdcError as exc:
            log.warning("checking the captured tables: %s", exc)

    async def _check_tables(self) -> None:
        """Compare the captured tables' OIDs with the last check; report and repair."""
        from ._tables import RECREATED, compare, problems

        assert self.store is not None
        names = self._followed_tables()
        known: dict[str, dict[str, Any]] = orjson.loads(self.store.get_meta("tables") or "{}")

        def read() -> tuple[dict[str, int | None], dict[int, str | None]]:
            conn = connect(self.dsn)
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
            await self._sync_publication()  # before the backfill: its watermarks need the table
            for ch in back:
                await self._backfill_table(ch.table)
        if changes or now != known:
            self.store.set_meta("tables", orjson.dumps(now).decode())
        self.table_problems = problems(now)
        for name in names:
            TABLE_MISSING.labels(name.removeprefix("public.")).set(
                1 if name.removeprefix("public.") in self.table_problems else 0
            )

    def _emit_table_change(self, content: bytes) -> None:
        conn = connect(self.dsn)
        try:
            emit_table_change(conn, content)
        finally:
            conn.close()

    async def _backfill_table(self, table: str) -> None:
        """Re-read a re-created table for every stream that names it."""
        assert self.store is not None
        for row in self.store.list_streams():
            wanted = {".".join(split_table(t)) for t in row["config"]["tables"]}
            if table not in wanted:
                continue
            try:
                await self.start_snapshot(row["name"], "backfill", None, tables=[table])
            except CdcError as exc:
                msg = f"table {table} was re-created but could not be re-read: {exc}"
                log.error("stream %s: %s", row["name"], msg)
                self.store.set_error(row["name"], msg)

    def _table_problem(self, cfg: dict[str, Any]) -> str | None:
        for t in cfg["tables"]:
            problem = self.table_problems.get(t.removeprefix("public."))
            if problem:
                return problem
        return None

    def fail(self, exc: SourceFatalError) -> None:
        """Record an error retrying cannot fix; ``run`` stops the service and exits with 2."""
        log.error("%s", exc)
        self.fatal_error = exc
        self.source_error = str(exc)
        self.failed.set()

    async def trim_log(self) -> int:
        """Delete the log segments every stream is done with; return the bytes freed.

        By the cursors persisted in the state database, made durable first: after a
        crash or a power cut streams restart from those, not from their cursors in memory.
        """
        assert self.log is not None and self.store is not None
        runners = list(self.runners.values())
        # (a stream delivered by workers reads its partitions' cursors from the store)
        saved = await asyncio.to_thread(lambda: [r.saved_cursor for r in runners])
        upto = min(min(saved, default=self.log.durable.seq), self.log.durable.seq)
        if upto < self.log.trim_threshold:
            return 0  # no whole segment to delete
        await asyncio.to_thread(self.store.sync_to_disk)
        return await asyncio.to_thread(self.log.truncate_before, upto)

    async def _refresh_slot_stats(self) -> None:
        def read() -> dict[str, Any]:
            conn = connect(self.dsn)
            try:
                return slot_stats(conn, self.config.source.slot)
            finally:
                conn.close()

        try:
            info = await asyncio.to_thread(read)
        except SourceError as exc:
            self.source_error = str(exc)
            return
        slot = self.config.source.slot
        self.slot_info = info
        if info:
            SLOT_LAG_BYTES.labels(slot).set(info["lag_bytes"])
            SLOT_RETAINED_BYTES.labels(slot).set(info["retained_bytes"])
        lag_s = 0.0
        if self.capture and info.get("lag_bytes", 0) > 0 and self.capture.status.last_commit_ts_us:
            lag_s = max(0.0, time.time() - self.capture.status.last_commit_ts_us / 1e6)
        SLOT_LAG_SECONDS.labels(slot).set(lag_s)
        self.slot_info["lag_seconds"] = round(lag_s, 3)

    # -- stream management (SQL, REST, Python) -------------------------------------------
    async def create_stream(self, cfg: StreamConfig, origin: str = "sql") -> StreamConfig:
        assert self.store is not None
        check_stream(cfg)  # name rule, destination address, options (all ways in share it)
        async with self._lock:
            if cfg.name in self.runners or self.store.has_stream(cfg.name):
                raise StreamExists(f"stream {cfg.name!r} already exists", stream=cfg.name)
            tables: list[str] | None = None
            if "*" not in cfg.tables:
                try:
                    tables = await asyncio.to_thread(self._tables_of, cfg)
                except SourceError as exc:
                    raise SqlError(str(exc.message), stream=cfg.name) from None
            if cfg.snapshot == "initial" and self.supervisor and self.supervisor.takes(cfg.destination.type):
                raise SqlError(
                    f"stream {cfg.name!r}: SNAPSHOT INITIAL needs delivery.workers: 1 (the stream would "
                    "be delivered by worker processes, which do not run snapshots)",
                    stream=cfg.name,
                )
            # validate filters/transforms before anything is stored
            await validate_webhook_stream(cfg, self.config)  # options, TLS files, SSRF guard
            self._compile(cfg, cfg.destination.address)
            self.store.create_stream(cfg.name, stream_to_json(cfg), origin, "running")
            # the stream starts at the log's end as of now, before its tables join the
            # publication, so no change committed after CREATE can slip past it
            assert self.log is not None
            self.store.checkpoint(cfg.name, self.log.last_seq)
            try:
                if tables is None:
                    tables = await asyncio.to_thread(self._stream_tables, cfg)
                # only this stream's tables are looked at: no cost per existing stream
                await asyncio.to_thread(self._publish, cfg.name, tables)
                await self._start_runner(self.store.get_stream(cfg.name))
            except (ValueError, TypeError) as exc:  # e.g. an option of the wrong type
                self.store.drop_stream(cfg.name)
                raise ConfigError(f"destination.options: {exc}", stream=cfg.name) from None
            except Exception:
                self.store.drop_stream(cfg.name)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._publish, cfg.name, None)
                raise
        log.info("stream %s created (%s -> %s)", cfg.name, ",".join(cfg.tables), cfg.destination.type)
        self._follow(cfg.name, cfg.tables)
        await self._check_tables_logged()  # note its tables' OIDs now: a drop right after is seen
        if cfg.snapshot == "initial":
            await self.start_snapshot(cfg.name, "snapshot", None)
        return cfg

    async def drop_stream(self, name: str, if_exists: bool = False) -> None:
        assert self.store is not None
        async with self._lock:
            try:
                self.store.get_stream(name)
            except StreamNotFound:
                if if_exists:
                    return
                raise
            snap = self.snapshots.pop(name, None)
            if snap is not None:
                await snap.stop()
            runner = self.runners.pop(name, None)
            if runner is not None:
                await runner.stop(drain_timeout=2.0)
                forget_stream(name, runner.endpoint)
            self.store.drop_stream(name)
            await asyncio.to_thread(self._publish, name, None)
            self._follow(name, None)
        log.info("stream %s dropped", name)

    async def set_paused(self, name: str, paused: bool) -> None:
        assert self.store is not None
        self.store.set_state(name, "paused" if paused else "running")
        runner = self.runners.get(name)
        if runner is not None:
            runner.pause() if paused else runner.resume()
        log.info("stream %s %s", name, "paused" if paused else "resumed")

    def stream_state(self, name: str, row: dict[str, Any]) -> str:
        runner = self.runners.get(name)
        if row["state"] == "paused":
            return "paused"
        if runner is None or row.get("failed"):
            return "failed"
        if self._table_problem(row["config"]):
            return "warning"  # a captured table is gone under its name: see last_error
        return "running"

    def list_stream_rows(self) -> list[dict[str, Any]]:
        assert self.store is not None
        rows = []
        for row in self.store.list_streams():
            cfg = row["config"]
            runner = self.runners.get(row["name"])
            rows.append(
                {
                    "name": row["name"],
                    "tables": ",".join(cfg["tables"]),
                    "destination": cfg["destination"]["type"],
                    "address": cfg["destination"]["address"]
                    + (f" topic={cfg['destination']['topic']}" if cfg["destination"].get("topic") else ""),
                    "format": cfg["format"].upper(),
                    "state": self.stream_state(row["name"], row),
                    "delivered": runner.stats.delivered if runner else 0,
                    "lag_events": (self.log.last_seq - runner.cursor) if runner and self.log else 0,
                }
            )
        return rows

    def stream_status(
        self,
        name: str,
        row: dict[str, Any] | None = None,
        dead_letters: int | None = None,
        snapshots: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """``row`` (its catalog row), ``dead_letters`` (its count) and ``snapshots`` (the
        stored snapshots of all streams) when the caller has them already: the overview of
        every stream reads each once for all streams, not once per stream."""
        assert self.store is not None and self.log is not None
        if row is None:
            row = self.store.get_stream(name)
        runner = self.runners.get(name)
        cfg = row["config"]
        st = runner.stats if runner else None
        cap = self.capture.status if self.capture else None
        lag_events = (self.log.last_seq - runner.cursor) if runner else 0
        lag_seconds = 0.0
        if runner and lag_events > 0 and runner.cursor < self.log.last_seq:
            first = self.log.read_memory(runner.cursor + 1, 1)
            if first:
                lag_seconds = max(0.0, time.time() - first[0].ts_us / 1e6)
        endpoint = runner.endpoint if runner else cfg["destination"]["address"]
        breaker = self.circuit_breaker.state_of(endpoint)
        return {
            "name": name,
            "state": self.stream_state(name, row),
            "tables": ",".join(cfg["tables"]),
            "destination": f"{cfg['destination']['type']} {cfg['destination']['address']}",
            "format": cfg["format"].upper(),
            "source_position": format_lsn(cap.confirmed_lsn) if cap else None,
            "replication_connected": cap.connected if cap else False,
            "stream_position": runner.cursor if runner else None,
            "lag_events": lag_events,
            "lag_bytes": self.slot_info.get("lag_bytes", 0),
            "lag_seconds": round(lag_seconds, 3),
            "events_processed": st.processed if st else 0,
            "events_filtered": st.filtered if st else 0,
            "events_delivered": st.delivered if st else 0,
            "events_failed": st.failed if st else 0,
            "events_retried": st.retried if st else 0,
            "dead_letters": self.store.count_dead_letters(name) if dead_letters is None else dead_letters,
            "queue_memory": runner.queue_memory if runner else 0,
            "queue_overflow": runner.queue_overflow if runner else 0,
            "throughput_per_sec": round(st.rate(), 1) if st else 0.0,
            "p99_latency_ms": st.p99_ms() if st else None,
            "circuit_breaker": f"{endpoint}={breaker.name}",
            "last_error": self._table_problem(cfg) or (st.last_error if st else None) or row["last_error"],
            "last_error_at": _iso(st.last_error_at if st else row["last_error_at"]),
            "capture_paused": cap.paused_reason if cap else None,
            "snapshot": _snapshot_summary(self.snapshot_status(name, snapshots)),
            "warnings": "; ".join(self.table_warnings.get(name, [])) or None,
            "unpublished_columns": {
                t: c
                for t, c in self.unpublished.items()
                if "*" in cfg["tables"] or t in {x.removeprefix("public.") for x in cfg["tables"]}
            },
        }

    # -- snapshots and backfills ------------------------------------------------------------
    async def start_snapshot(
        self, name: str, kind: str = "backfill", where: str | None = None, tables: list[str] | None = None
    ) -> None:
        """Send the current rows of the stream's tables (all, or those matching ``where``;
        ``tables``: only those)."""
        from .postgres import Snapshotter

        assert self.store is not None
        row = self.store.get_stream(name)
        runner = self.runners.get(name)
        if runner is None:
            raise SqlError(f"stream {name!r} is not running", stream=name)
        if isinstance(runner, RemoteStream):
            raise SqlError(
                f"stream {name!r} is delivered by worker processes: snapshots and backfills "
                "need delivery.workers: 1",
                stream=name,
            )
        current = self.snapshots.get(name)
        if (
            current is not None
            and current.state.get("state") == "running"
            and current._task
            and not current._task.done()
        ):
            raise SqlError(
                f"stream {name!r} already has a {current.kind} in progress; "
                f"ALTER CDC STREAM {name} CANCEL BACKFILL first",
                stream=name,
            )
        cfg = StreamConfig.model_validate(row["config"])
        predicate = None
        if where:
            from .pipeline import compile_predicate

            try:
                predicate = compile_predicate(where)
            except CdcError as exc:
                raise SqlError(f"invalid backfill predicate: {exc}", stream=name) from None
        if tables is None:
            tables = await asyncio.to_thread(self._tables_of, cfg) if "*" not in cfg.tables else []
        if not tables:
            raise SqlError(f"stream {name!r} has no tables to read", stream=name)
        runner.database = self.config.database
        snap = Snapshotter(
            stream=name,
            kind=kind,
            dsn=self.dsn,
            database=self.config.database,
            tables=tables,
            store=self.store,
            register=runner.register_chunk,
            predicate=predicate.__call__ if predicate is not None else None,
            where=where,
            chunk_size=self.config.cdc.snapshot_chunk_size,
        )
        self.snapshots[name] = snap
        snap.start()
        log.info("%s of stream %s started (%s)", kind, name, ", ".join(tables))

    async def cancel_snapshot(self, name: str) -> None:
        assert self.store is not None
        self.store.get_stream(name)
        snap = self.snapshots.pop(name, None)
        if snap is None:
            raise SqlError(f"stream {name!r} has no backfill in progress", stream=name)
        await snap.cancel()
        log.info("%s of stream %s cancelled", snap.kind, name)

    def snapshot_status(
        self, name: str, stored: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        snap = self.snapshots.get(name)
        if snap is not None:
            status: dict[str, Any] = snap.status
            return status
        if stored is not None:
            return stored.get(name)
        assert self.store is not None
        return self.store.get_snapshot(name)

    # -- the guide's Python API -----------------------------------------------------------
    async def register(self, registration: WebhookRegistration) -> str:
        """Register a webhook endpoint; returns the name of the stream that serves it."""
        cfg = registration_stream(registration)
        await self.create_stream(cfg, origin="api")
        return cfg.name

    async def unregister(self, url_or_name: str) -> None:
        assert self.store is not None
        if self.store.has_stream(url_or_name):
            await self.drop_stream(url_or_name)
            return
        for row in self.store.list_streams():
            dest = row["config"]["destination"]
            if row["name"] == url_or_name or (dest["type"] == "webhook" and dest["address"] == url_or_name):
                await self.drop_stream(row["name"])
                return
        raise StreamNotFound(f"no webhook registered for {url_or_name!r}")

    async def webhooks(self) -> list[dict[str, Any]]:
        assert self.store is not None
        out = []
        for row in self.store.list_streams():
            cfg = row["config"]
            if cfg["destination"]["type"] != "webhook":
                continue
            out.append(
                {
                    "name": row["name"],
                    "url": cfg["destination"]["address"],
                    "secret": "********" if cfg.get("secret") else None,
                    "tables": cfg["tables"],
                    "operations": cfg["operations"],
                    "state": row["state"],
                }
            )
        return out

    async def add_filter(self, flt: Any, stream: str | None = None) -> None:
        """Attach a filter (FilterConfig or a built EventFilter) to one stream or to all."""
        assert self.store is not None
        if hasattr(flt, "to_config"):  # an EventFilter builder
            flt = flt.to_config()
        fc = flt if isinstance(flt, FilterConfig) else getattr(flt, "config", None)
        if not isinstance(fc, FilterConfig):
            raise CdcError("add_filter takes a FilterConfig or EventFilter(...).build()")
        names = [stream] if stream else [r["name"] for r in self.store.list_streams()]
        for name in names:
            row = self.store.get_stream(name)
            cfg = StreamConfig.model_validate(row["config"])
            cfg = cfg.model_copy(update={"filters": [*cfg.filters, fc]})
            self.store.update_stream_config(name, stream_to_json(cfg))
            runner = self.runners.pop(name, None)
            if runner is not None:
                await runner.stop(drain_timeout=5.0)
            await self._start_runner(self.store.get_stream(name))

    # -- dead letters -------------------------------------------------------------------------
    async def replay_dead_letters(self, ids: list[int] | None = None, stream: str | None = None) -> int:
        """Send dead letters again (honouring the delivery log); delete those delivered."""
        assert self.store is not None and self.exactly_once is not None
        rows = self.store.list_dead_letters(stream, limit=100_000)
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["id"] in wanted]
        done: list[int] = []
        from .sinks import OutboundEvent

        for r in rows:
            full = self.store.get_dead_letter(r["id"])
            runner = self.runners.get(r["stream"])
            if full is None or runner is None:
                continue
            if await self.exactly_once.was_delivered(full["event_id"], full["endpoint"]):
                done.append(r["id"])
                continue
            ev = OutboundEvent(
                full["event_id"], full["seq"], full["table"], full["operation"], full["key"], full["body"], ""
            )
            results = await runner.sink.send([ev])
            if results[0].ok:
                self.store.checkpoint(
                    r["stream"],
                    runner.cursor,
                    [(full["endpoint"], full["event_id"], full["seq"], time.time())],
                )
                done.append(r["id"])
        if done:
            self.store.delete_dead_letters(done)
        return len(done)


_worker_services: dict[int, WebhookServer] = {}


def build_partition_runner(
    config: Config, row: dict[str, Any], log_: LocalLog, store: Store, partitions: PartitionSet
) -> StreamRunner:
    """A delivery worker's runner of one stream over its partitions: built as the service
    builds its own (sink, filters, transformation, format). Runs in the worker process."""
    service = _worker_services.get(id(config))
    if service is None:
        service = _worker_services[id(config)] = WebhookServer(config)
        service.store, service.log = store, log_
    return service._new_runner(row, partitions)


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


def _snapshot_summary(snap: dict[str, Any] | None) -> str | None:
    if not snap:
        return None
    text = f"{snap['kind']} {snap['state']}: {snap.get('rows_sent', 0)} rows"
    if snap.get("current_table") and snap["state"] == "running":
        text += f", reading {snap['current_table']}"
    if snap.get("where"):
        text += f" where {snap['where']}"
    if snap.get("error"):
        text += f" ({snap['error']})"
    return text


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operations_from(values: list[str]) -> list[OperationType]:
    return [OperationType.parse(v) for v in values]


__all__ = ["ExactlyOnce", "SecretStr", "WebhookServer"]
