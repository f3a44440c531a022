"""The running service: wires capture, the local log, streams, sinks and the HTTP API.

:class:`WebhookServer` is the guide's ``WebhookServer``: build it from a
:class:`Config`, ``async with`` it (or ``await start()`` / ``await stop()``),
``await register(WebhookRegistration(...))``. The CLI's ``run`` command uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from . import _status
from ._catalog import Catalog, registration_stream, stream_to_json
from ._config import (
    Config,
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
from ._input import check_stream
from ._metrics import (
    SLOT_LAG_BYTES,
    SLOT_LAG_SECONDS,
    SLOT_RETAINED_BYTES,
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
from .pipeline import build_formatter, content_types
from .postgres import (
    Capture,
    check_server,
    codec_description,
    codec_name,
    connect,
    debezium_column_rows,
    ensure_slot,
    format_lsn,
    slot_stats,
    split_table,
)
from .sinks import Sink, SinkContext, build_sink, validate_webhook_stream
from .store import Store, open_store

log = logging.getLogger("heliosdb_cdc")


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

    def __init__(
        self,
        config: Config | WebhookConfig | str | Path | None = None,
        *,
        role: str | None = None,
        **overrides: Any,
    ) -> None:
        """``role``: None (capture and delivery in one process), ``"capture"`` (_ha.py) or
        ``"worker"`` (_worker_role.py)."""
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
        from ._ha import check_role

        check_role(config, role)
        self.role = role
        self.ha: Any = None  # the role's part: _ha.CaptureRole or _worker_role.WorkerRole
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
        self.snapshots: dict[str, Any] = {}
        # streams, the publication, captured tables, filters (_catalog.py)
        self.catalog = Catalog(config, self._backfill_table, _connect)
        self._started = False
        # an error retrying cannot fix, found while running (a dropped slot): ``run`` exits on it
        self.fatal_error: SourceFatalError | None = None
        self.failed = asyncio.Event()
        self._resnapshot = False
        self.tls_reloader: Any = None  # the HTTP layer's, when it serves TLS

    @property
    def codec(self) -> str:
        """The row codec capture uses: ``native`` (compiled) or ``pure-python``."""
        return codec_name()

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

    @property
    def leader(self) -> bool | None:
        """With ``--role capture``: whether this instance leads capture; else None."""
        return bool(self.ha.leader) if self.ha is not None else None

    async def _start(self, serve_http: bool) -> None:
        cfg = self.config
        if self.role == "capture":
            await self._start_capture_role(serve_http)
            return
        if self.role == "worker":
            await self._start_worker_role(serve_http)
            return
        if serve_http:
            from .server import check_http_security

            check_http_security(cfg)  # tokens required off loopback; TLS files load
        self.store = open_store(cfg)
        self.catalog.open(self.store)
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
        await self.catalog.reconcile_config(self.log.last_seq)
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
        log.info("codec: %s", codec_description())  # the compiled one, or why not
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
        await self.catalog.check_tables_logged()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._started = True
        log.info("heliosdb-cdc running: %d stream(s)", len(self.runners))

    async def _start_capture_role(self, serve_http: bool) -> None:
        """Capture only, into the Kafka journal, while this instance holds the lease."""
        from ._ha import CaptureRole

        if serve_http:
            from .server import check_http_security

            check_http_security(self.config)
        self.store = open_store(self.config)
        self.catalog.open(self.store)
        await self.catalog.reconcile_config(0)  # no local log in this role
        if serve_http:
            from .server import start_http

            self._http = await start_http(self)
        self.ha = CaptureRole(self)
        await self.ha.start()
        self._started = True
        log.info("heliosdb-cdc running: role capture (%s)", self.ha.holder)

    async def _start_worker_role(self, serve_http: bool) -> None:
        """Delivery only, from the Kafka journal, in the workers' consumer group."""
        from ._worker_role import WorkerRole

        if serve_http:
            from .server import check_http_security

            check_http_security(self.config)
        self.store = open_store(self.config)
        self.exactly_once = ExactlyOnce(self.store, self.config.webhook.exactly_once.window_secs)
        self.catalog.open(self.store)
        await self.catalog.reconcile_config(0)  # no local log in this role
        if serve_http:
            from .server import start_http

            self._http = await start_http(self)
        self.ha = WorkerRole(self)
        await self.ha.start()
        self._started = True
        log.info("heliosdb-cdc running: role worker (%s), %d stream(s)", self.ha.holder, len(self.runners))

    async def stop(self) -> None:
        """Drain in-flight deliveries, checkpoint, stop capture."""
        if self.ha is not None:
            await self.ha.stop()
            self.ha = None
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
                await self.catalog.sync_publication()
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
        assert self.store is not None
        slot = self.config.source.slot
        key = f"slot:{slot}"
        known = self.store.get_meta(key)
        end_lsn = self.log.durable.end_lsn if self.log is not None else 0  # (no log: --role capture)
        if known is None and end_lsn > 0:
            known = format_lsn(end_lsn)  # a state directory from before the marker
        if ensure_slot(conn, slot, create=known is None or self._resnapshot):
            if known is not None:
                log.warning(
                    "replication slot %s was missing and is created again; the captured tables "
                    "are re-read with a snapshot (--resnapshot)",
                    slot,
                )
            self.store.set_meta(key, format_lsn(end_lsn) or "created")
        elif known is None:
            self.store.set_meta(key, format_lsn(end_lsn) or "existing")

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

    def columns_of(self, table: str) -> list[dict[str, Any]]:
        return self.catalog.columns_of(table)

    # -- runners -----------------------------------------------------------------
    def _build_sink(self, cfg: StreamConfig) -> tuple[Sink, str]:
        """The stream's sink and endpoint (sinks/_registry.py maps the destination kind)."""
        store = self.store
        return build_sink(
            cfg,
            SinkContext(
                self.config,
                instance_id=lambda: _instance_id(store),
                semaphore=self._semaphore,
                content_types=content_types,
            ),
        )

    def _compile(self, cfg: StreamConfig, endpoint: str) -> tuple[Any, Any]:
        """The stream's filter predicate and transformation (the catalog compiles them)."""
        return self.catalog.compile(cfg, endpoint)

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
        return self.make_runner(cfg, sink, endpoint, self.log, self.store, predicate, transform, partitions)

    def make_runner(
        self,
        cfg: StreamConfig,
        sink: Sink,
        endpoint: str,
        journal: Any,
        store: Any,
        predicate: Any,
        transform: Any,
        partitions: PartitionSet | None = None,
        needs_event: bool | None = None,
    ) -> StreamRunner:
        """A runner of ``cfg`` reading ``journal`` (the local log, or a worker role's journal
        source) and checkpointing into ``store``, with the service's retry, breaker, format
        and checkpoint settings: one place for every way a stream is run."""
        ops = {o.value for o in cfg.operations} or None
        runner = StreamRunner(
            cfg.name,
            sink,
            journal,
            store,
            endpoint=endpoint,
            breaker=self.circuit_breaker.breaker(endpoint),
            retry=self.config.webhook.retry,
            exactly_once=self.config.webhook.exactly_once,
            route=make_router(set(cfg.tables) if "*" not in cfg.tables else None, ops),
            predicate=predicate,
            transform=transform,
            needs_event=sink.needs_event if needs_event is None else needs_event,
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
                await self.catalog.check_tables()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("housekeeping: %s", exc)

    # -- captured tables dropped, renamed, re-created: the catalog checks, snapshots re-read --
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
                    tables = await asyncio.to_thread(self.catalog.tables_of, cfg)
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
                    tables = await asyncio.to_thread(self.catalog.stream_tables, cfg)
                # only this stream's tables are looked at: no cost per existing stream
                await asyncio.to_thread(self.catalog.publish, cfg.name, tables)
                await self._start_runner(self.store.get_stream(cfg.name))
            except (ValueError, TypeError) as exc:  # e.g. an option of the wrong type
                self.store.drop_stream(cfg.name)
                raise ConfigError(f"destination.options: {exc}", stream=cfg.name) from None
            except Exception:
                self.store.drop_stream(cfg.name)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.catalog.publish, cfg.name, None)
                raise
        log.info("stream %s created (%s -> %s)", cfg.name, ",".join(cfg.tables), cfg.destination.type)
        self.catalog.follow(cfg.name, cfg.tables)
        await self.catalog.check_tables_logged()  # note its tables' OIDs now: a drop right after is seen
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
            await asyncio.to_thread(self.catalog.publish, name, None)
            self.catalog.follow(name, None)
        log.info("stream %s dropped", name)

    async def set_paused(self, name: str, paused: bool) -> None:
        assert self.store is not None
        self.store.set_state(name, "paused" if paused else "running")
        runner = self.runners.get(name)
        if runner is not None:
            runner.pause() if paused else runner.resume()
        log.info("stream %s %s", name, "paused" if paused else "resumed")

    def stream_state(self, name: str, row: dict[str, Any]) -> str:
        return _status.stream_state(self, name, row)

    def list_stream_rows(self) -> list[dict[str, Any]]:
        return _status.list_stream_rows(self)

    def stream_status(
        self,
        name: str,
        row: dict[str, Any] | None = None,
        dead_letters: int | None = None,
        snapshots: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """``row`` (its catalog row), ``dead_letters`` (its count) and ``snapshots`` (the
        stored snapshots of all streams) when the caller has them already (_status.py)."""
        return _status.stream_status(self, name, row, dead_letters, snapshots)

    def overview(self) -> dict[str, Any]:
        """The status page's data: capture, slot, local log, every stream (_status.py)."""
        return _status.overview(self)

    def health(self) -> dict[str, Any]:
        return _status.health(self)

    # -- the HTTP layer's reads of the catalog (server/_protocol.py) -------------------------
    def stream_names(self) -> list[str]:
        assert self.store is not None
        return self.store.stream_names()

    def has_stream(self, name: str) -> bool:
        assert self.store is not None
        return self.store.has_stream(name)

    def get_stream(self, name: str) -> dict[str, Any]:
        assert self.store is not None
        return self.store.get_stream(name)

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
            tables = await asyncio.to_thread(self.catalog.tables_of, cfg) if "*" not in cfg.tables else []
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
    def list_dead_letters(self, stream: str | None, limit: int) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.list_dead_letters(stream, limit)

    def purge_dead_letters(self, stream: str | None = None) -> int:
        """Delete the dead letters (of one stream, or all); return how many."""
        assert self.store is not None
        return self.store.delete_dead_letters(stream=stream)

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
            try:
                formatted = _reformat(runner, ev, full.get("event"))
            except Exception as exc:  # kept, with the reason in the log
                fmt = getattr(runner.formatter, "name", "")
                log.warning("dead letter %s not replayed: format %s failed: %s", r["id"], fmt, exc)
                continue
            if not formatted:
                done.append(r["id"])  # the stream's format now skips it (Debezium: TRUNCATE)
                continue
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


def _reformat(runner: Any, ev: Any, event_json: bytes | None) -> bool:
    """A dead letter as its stream sends it: the stream's format applied to the stored
    default event again (CloudEvents headers, Debezium key and tombstone), else the stored
    body as is. False when the format skips the event; a format error is raised."""
    if event_json is None or runner.formatter is None:
        return True
    from ._event import parse_event_id
    from .delivery import decode_event

    event = decode_event(event_json)
    ev.event = event
    lsn = parse_event_id(ev.event_id).commit_lsn
    return bool(runner._apply_format(ev, event, lsn))


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
        service.catalog.open(store)
    return service._new_runner(row, partitions)




def _connect(dsn: str) -> Any:
    """The source connections of the service and its catalog (one name to look up)."""
    return connect(dsn)


def _instance_id(store: Store | None) -> str:
    assert store is not None
    return store.instance_id


def operations_from(values: list[str]) -> list[OperationType]:
    return [OperationType.parse(v) for v in values]


__all__ = ["ExactlyOnce", "SecretStr", "WebhookServer"]
