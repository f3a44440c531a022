"""A delivery worker process: the stream runners of its share of the partitions.

Spawned by :class:`~heliosdb_cdc.delivery.WorkerSupervisor`. It reads the local log
read-only (:class:`~heliosdb_cdc.journal.LogFollower`) up to the durable position the
service announces, runs a :class:`StreamRunner` per stream restricted to its partitions
(lanes, retries, circuit breakers, sinks, exactly-once records and checkpoints per
(stream, partition), as in one process), and reports counters and metrics every
``REPORT_SECS``. It leaves as soon as its pipe to the service closes, so a service
killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .._config import Config
from ..journal import LogFollower
from ..store import Store, open_store
from ._partition import PartitionSet
from ._runner import StreamRunner
from ._wire import (
    MetricsShipper,
    PauseStream,
    Report,
    StartStream,
    Stopped,
    StopStream,
    StreamReport,
    Tail,
)

log = logging.getLogger("heliosdb_cdc.delivery.worker")

REPORT_SECS = 0.5

# (config, catalog row, log, store, partitions) -> a runner not yet started; the service
# passes its own (it knows how to build sinks, filters and formats)
RunnerFactory = Callable[[Config, dict[str, Any], LogFollower, Store, PartitionSet], StreamRunner]


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    workers: int
    partitions: int
    config: Config
    durable_seq: int
    factory: RunnerFactory
    log_level: int = logging.INFO


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """The worker process's entry point: logs like the service (``logging`` settings)."""
    from .._logging import setup_logging

    # Ctrl-C reaches the whole process group: the service stops the workers in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(spec.config.logging.level, spec.config.logging.json_logs)
    logging.getLogger().setLevel(spec.log_level)  # as the service runs (tests raise it)
    try:
        asyncio.run(_Worker(conn, spec).run())
    except KeyboardInterrupt:
        pass


class _Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.runners: dict[str, StreamRunner] = {}
        self.send_lock = threading.Lock()
        self.shipper = MetricsShipper()
        self.done = asyncio.Event()

    async def run(self) -> None:
        spec = self.spec
        self.loop = asyncio.get_running_loop()
        self.store = open_store(spec.config)
        self.log = LogFollower(spec.config.log_dir)
        self.log.open()
        self.log.bind_loop(self.loop)
        self.log.advance(spec.durable_seq)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        threading.Thread(target=self._read_pipe, name="heliosdb-cdc-worker-pipe", daemon=True).start()
        reporter = asyncio.create_task(self._report_loop())
        try:
            while True:
                msg = await self.queue.get()
                if msg is None:
                    break
                await self._handle(msg)
        finally:
            reporter.cancel()
            await asyncio.gather(
                *(r.stop(drain_timeout=2.0) for r in self.runners.values()), return_exceptions=True
            )
            self.store.close()

    def _read_pipe(self) -> None:
        """Blocking reads on a thread; the service gone (EOF) ends the process at once:
        everything delivered is checkpointed or found again from the checkpoints."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            if isinstance(msg, Tail):  # the hot message: straight to the log's readers
                self.loop.call_soon_threadsafe(self.log.advance, msg.seq)
            else:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)

    def send(self, msg: object) -> None:
        with self.send_lock:
            try:
                self.conn.send(msg)
            except (BrokenPipeError, OSError):
                os._exit(0)

    async def _handle(self, msg: object) -> None:
        if isinstance(msg, StartStream):
            await self._start(msg.row)
        elif isinstance(msg, StopStream):
            runner = self.runners.pop(msg.name, None)
            if runner is not None:
                await runner.stop(drain_timeout=2.0)
                self._forget(runner)
            self.send(Stopped(msg.name))
        elif isinstance(msg, PauseStream):
            runner = self.runners.get(msg.name)
            if runner is not None:
                runner.pause() if msg.paused else runner.resume()

    async def _start(self, row: dict[str, Any]) -> None:
        spec = self.spec
        name = row["name"]
        old = self.runners.pop(name, None)
        if old is not None:
            await old.stop(drain_timeout=2.0)
        stream_cursor, cursors = await asyncio.to_thread(self._cursors, name)
        parts = PartitionSet.of(spec.index, spec.workers, spec.partitions, stream_cursor, cursors)
        try:
            runner = spec.factory(spec.config, row, self.log, self.store, parts)
        except Exception as exc:
            log.error("stream %s: cannot start in worker %d: %s", name, spec.index, exc)
            return
        if row.get("state") == "paused":
            runner.pause()
        # every owned partition has its own cursor in the store from now on: where the
        # stream resumes never depends on the stream's own cursor again
        await asyncio.to_thread(self._save_floors, name, parts)
        await runner.start(parts.start)
        self.runners[name] = runner

    def _cursors(self, name: str) -> tuple[int, dict[int, int]]:
        cursor = self.store.get_cursor(name)
        return (cursor if cursor is not None else self.log.last_seq), self.store.partition_cursors(name)

    def _save_floors(self, name: str, parts: PartitionSet) -> None:
        by_floor: dict[int, list[int]] = {}
        for p, floor in parts.floors.items():
            by_floor.setdefault(floor, []).append(p)
        for floor, owned in by_floor.items():
            self.store.checkpoint(name, floor, partitions=owned)

    def _forget(self, runner: StreamRunner) -> None:
        from .._metrics import forget_stream

        forget_stream(runner.name, runner.endpoint)

    async def _report_loop(self) -> None:
        last: Report | None = None
        while True:
            await asyncio.sleep(REPORT_SECS)
            with contextlib.suppress(Exception):
                report = self._report()
                m = report.metrics
                if m.counters or m.histograms or report != last:  # an idle worker sends nothing
                    self.send(report)
                    last = report

    def _report(self) -> Report:
        streams = {}
        for name, r in self.runners.items():
            st = r.stats
            streams[name] = StreamReport(
                processed=st.processed,
                filtered=st.filtered,
                delivered=st.delivered,
                failed=st.failed,
                retried=st.retried,
                dead_lettered=st.dead_lettered,
                last_error=st.last_error,
                last_error_at=st.last_error_at,
                last_delivery_at=st.last_delivery_at,
                cursor=r.cursor,
                saved_cursor=r.saved_cursor,
                queue_memory=r.queue_memory,
                queue_overflow=r.queue_overflow,
                rate=st.rate(),
                p99_ms=st.p99_ms(),
                circuit=r.breaker.state.value,
            )
        return Report(streams, self.shipper.collect())
