"""The stream supervisor for ``delivery.workers`` >= 2: delivery in worker processes.

The service keeps capture, the catalog and the HTTP API. :class:`WorkerSupervisor` spawns
the workers (``multiprocessing`` spawn), tells them where the durable end of the local log
is, forwards stream start/stop/pause, restarts a worker that dies (it resumes each of its
partitions from that partition's checkpoint: nothing is lost) and merges the workers'
reports: each stream is a :class:`RemoteStream` in the service, with the attributes the
status and the API read from an in-process :class:`StreamRunner`, and the workers' metrics
are added to this process's (``/metrics`` unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .._config import Config
from .._errors import CdcError
from .._metrics import WORKER_RESTARTS
from ..journal import Chunk, LocalLog
from ..sinks import Sink
from ..store import Store
from ._circuit import CircuitBreaker, CircuitState
from ._partition import stream_floor
from ._runner import StreamStats
from ._wire import MetricsMerger, PauseStream, Report, StartStream, Stopped, StopStream, StreamReport, Tail
from ._worker import RunnerFactory, WorkerSpec, worker_main

log = logging.getLogger("heliosdb_cdc.delivery")

PARTITIONS_KEY = "delivery:partitions"  # meta: the partition count the cursors were written with
RESTART_DELAY_SECS = 0.5
TAIL_POLL_SECS = 0.005


def fold_cursors(store: Store, names: list[str], partitions: int | None) -> None:
    """Before streams start: back to one cursor per stream where the partition cursors
    cannot be used as they are (``partitions`` None: one process delivers; or the
    partition count changed). The stream resumes from its lowest partition, so nothing is
    lost; events of other partitions after it are sent again (same ``event_id``)."""
    stored = store.get_meta(PARTITIONS_KEY)
    old = int(stored) if stored else None
    for name in names:
        cursors = store.partition_cursors(name)
        if not cursors or (partitions is not None and old == partitions):
            continue
        stream_cursor = store.get_cursor(name) or 0
        count = old or (max(cursors) + 1)
        floor = stream_floor(stream_cursor, cursors, count)
        log.info("stream %s: partition cursors folded into one at %d", name, floor)
        store.fold_partition_cursors(name, floor)
    value = str(partitions) if partitions is not None else None
    if value != stored:
        store.set_meta(PARTITIONS_KEY, value)


class RemoteStats(StreamStats):
    """A stream's counters summed over the workers (and over workers that died)."""

    def __init__(self) -> None:
        super().__init__()
        self._rate = 0.0
        self._p99: float | None = None

    def rate(self, window: float = 0.0) -> float:
        return self._rate

    def p99_ms(self) -> float | None:
        return self._p99  # the highest of the workers' (each over its own events)


_COUNTS = ("processed", "filtered", "delivered", "failed", "retried", "dead_lettered")


class RemoteStream:
    """A stream delivered by the workers, as the service sees it (like a StreamRunner)."""

    def __init__(
        self,
        supervisor: WorkerSupervisor,
        row: dict[str, Any],
        sink: Sink,
        endpoint: str,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.breaker = breaker  # the service's: shows the workers' worst state
        self.name: str = row["name"]
        self.row = row
        self.sink = sink  # for replaying dead letters from the service
        # no format applied again on replay (the stored body is sent), no journal of its own
        self.formatter: Any = None
        self.log: Any = None
        self.endpoint = endpoint
        self.paused = row.get("state") == "paused"
        self.database = ""
        self.stats = RemoteStats()
        self._reports: dict[int, StreamReport] = {}
        self._retired: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self._stopped: dict[int, asyncio.Event] = {}
        self._start_cursor = 0

    # -- what the service reads -----------------------------------------------------
    @property
    def cursor(self) -> int:
        return min((r.cursor for r in self._reports.values()), default=self._start_cursor)

    @property
    def saved_cursor(self) -> int:
        """Where the stream resumes after a restart: the lowest persisted partition cursor
        (reads the state database: call off the event loop)."""
        return self.supervisor.persisted_floor(self.name)

    @property
    def queue_memory(self) -> int:
        return sum(r.queue_memory for r in self._reports.values())

    @property
    def queue_overflow(self) -> int:
        return max((r.queue_overflow for r in self._reports.values()), default=0)

    def register_chunk(self, chunk: Chunk) -> None:
        raise CdcError(
            f"stream {self.name!r}: snapshots and backfills need delivery.workers: 1", stream=self.name
        )

    # -- control ------------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        self.supervisor.broadcast(PauseStream(self.name, True))

    def resume(self) -> None:
        self.paused = False
        self.supervisor.broadcast(PauseStream(self.name, False))

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop the stream in every worker (each drains and checkpoints)."""
        await self.supervisor.stop_stream(self, drain_timeout + 1.0)
        with contextlib.suppress(Exception):
            await self.sink.close()

    # -- reports ---------------------------------------------------------------------------
    def update(self, worker: int, report: StreamReport) -> None:
        self._reports[worker] = report
        self._merge()

    def retire(self, worker: int) -> None:
        """A worker died: keep what it counted (a new one counts from zero)."""
        report = self._reports.pop(worker, None)
        if report is not None:
            for name in _COUNTS:
                self._retired[name] += getattr(report, name)
        self._merge()

    def _merge(self) -> None:
        st, reports = self.stats, list(self._reports.values())
        for name in _COUNTS:
            setattr(st, name, self._retired[name] + sum(getattr(r, name) for r in reports))
        errors = [r for r in reports if r.last_error_at]
        if errors:
            last = max(errors, key=lambda r: r.last_error_at or 0.0)
            st.last_error, st.last_error_at = last.last_error, last.last_error_at
        st.last_delivery_at = max((r.last_delivery_at or 0.0 for r in reports), default=0.0) or None
        st._rate = sum(r.rate for r in reports)
        st._p99 = max((r.p99_ms for r in reports if r.p99_ms is not None), default=None)
        if self.breaker is not None and reports:
            self.breaker.show(CircuitState(max(r.circuit for r in reports)))


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    generation: int = 0
    restarts: int = 0
    started_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerSupervisor:
    """Runs webhook streams in ``workers`` processes, ``partitions`` partitions each."""

    def __init__(
        self,
        config: Config,
        log_: LocalLog,
        store: Store,
        factory: RunnerFactory,
        *,
        workers: int,
        partitions: int,
    ) -> None:
        self.config = config
        self.log = log_
        self.store = store
        self.factory = factory
        self.workers = workers
        self.partitions = partitions
        self.streams: dict[str, RemoteStream] = {}
        self.metrics = MetricsMerger()
        self._slots = [_Slot(i) for i in range(workers)]
        self._tail = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.restarts: deque[tuple[int, float]] = deque(maxlen=100)  # (worker, when)

    @staticmethod
    def takes(destination_type: str) -> bool:
        """Which streams the workers deliver: webhooks. Kafka (transactions keyed by the
        stream) and Kinesis (one resume mark per stream) keep one writer, in the service."""
        return destination_type == "webhook"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tail = self.log.durable.seq
        for slot in self._slots:
            self._spawn(slot)
        self._tasks.append(asyncio.create_task(self._push_tail(), name="workers-tail"))
        log.info("delivery: %d worker processes, %d partitions", self.workers, self.partitions)

    async def stop(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        for slot in self._slots:
            self._send(slot, None)  # drain, checkpoint, exit
        for slot in self._slots:
            proc = slot.process
            if proc is None:
                continue
            await asyncio.to_thread(proc.join, 15.0)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5.0)
            if slot.conn is not None:
                slot.conn.close()

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid is not None]

    def _spawn(self, slot: _Slot) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        spec = WorkerSpec(
            index=slot.index,
            workers=self.workers,
            partitions=self.partitions,
            config=self.config,
            durable_seq=self.log.durable.seq,
            factory=self.factory,
            log_level=logging.getLogger("heliosdb_cdc").getEffectiveLevel(),
        )
        proc = ctx.Process(
            target=worker_main, args=(child, spec), name=f"heliosdb-cdc-worker-{slot.index}", daemon=True
        )
        proc.start()
        child.close()  # only the worker holds its end: the service gone, the worker reads EOF
        slot.generation += 1
        slot.process, slot.conn, slot.started_at = proc, parent, time.monotonic()
        for stream in self.streams.values():
            self._send(slot, StartStream({**stream.row, "state": "paused" if stream.paused else "running"}))
        gen = slot.generation
        threading.Thread(
            target=self._read_pipe,
            args=(slot, parent, gen),
            name=f"heliosdb-cdc-worker-{slot.index}-pipe",
            daemon=True,
        ).start()

    def _read_pipe(self, slot: _Slot, conn: Connection, gen: int) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._on_message, slot.index, gen, msg)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_exit, slot, gen)

    def _on_message(self, index: int, gen: int, msg: object) -> None:
        if gen != self._slots[index].generation:
            return
        if isinstance(msg, Report):
            self.metrics.apply(index, msg.metrics, self.streams)
            for name, report in msg.streams.items():
                stream = self.streams.get(name)
                if stream is not None:
                    stream.update(index, report)
        elif isinstance(msg, Stopped):
            stream = self.streams.get(msg.name)
            ev = stream._stopped.get(index) if stream is not None else None
            if ev is not None:
                ev.set()

    def _on_exit(self, slot: _Slot, gen: int) -> None:
        if gen != slot.generation or self._closing:
            return
        proc = slot.process
        code = proc.exitcode if proc is not None else None
        if proc is not None:
            proc.join(0.1)
            code = proc.exitcode
        log.error(
            "delivery worker %d (pid %s) exited (%s); restarting it",
            slot.index,
            proc.pid if proc else "?",
            code,
        )
        self.metrics.forget(slot.index)
        for stream in self.streams.values():
            stream.retire(slot.index)
            ev = stream._stopped.get(slot.index)
            if ev is not None:
                ev.set()  # a stop it can no longer answer: its checkpoints stand
        if slot.conn is not None:
            slot.conn.close()
        slot.restarts += 1
        WORKER_RESTARTS.inc()
        self.restarts.append((slot.index, time.time()))
        quick = time.monotonic() - slot.started_at < 5.0
        delay = min(RESTART_DELAY_SECS * (2 ** min(slot.restarts, 6)), 30.0) if quick else RESTART_DELAY_SECS
        self._loop.call_later(delay, self._respawn, slot, slot.generation)

    def _respawn(self, slot: _Slot, gen: int) -> None:
        if self._closing or gen != slot.generation:
            return
        self._spawn(slot)
        self._send(slot, Tail(self._tail))

    # -- messages --------------------------------------------------------------------------
    def _send(self, slot: _Slot, msg: object) -> None:
        conn = slot.conn
        if conn is None:
            return
        with slot.lock:
            try:
                conn.send(msg)
            except (BrokenPipeError, OSError, ValueError):
                pass  # it died: its pipe thread restarts it

    def broadcast(self, msg: object) -> None:
        for slot in self._slots:
            self._send(slot, msg)

    async def _push_tail(self) -> None:
        """Tell the workers how far the log is durable, as it moves."""
        while True:
            await self.log.wait_beyond(self._tail, timeout=1.0)
            durable = self.log.durable.seq
            if durable > self._tail:
                self._tail = durable
                self.broadcast(Tail(durable))
            else:
                await asyncio.sleep(TAIL_POLL_SECS)  # appended, not yet synced

    # -- streams -----------------------------------------------------------------------------
    def start_stream(
        self, row: dict[str, Any], sink: Sink, endpoint: str, breaker: CircuitBreaker | None = None
    ) -> RemoteStream:
        stream = RemoteStream(self, row, sink, endpoint, breaker)
        stream._start_cursor = self.persisted_floor(row["name"])
        self.streams[stream.name] = stream
        self.broadcast(StartStream(row))
        return stream

    async def stop_stream(self, stream: RemoteStream, timeout: float) -> None:
        if self.streams.get(stream.name) is stream:
            del self.streams[stream.name]
        stream._stopped = {s.index: asyncio.Event() for s in self._slots if s.conn is not None}
        self.broadcast(StopStream(stream.name))
        waits = [asyncio.wait_for(ev.wait(), timeout) for ev in stream._stopped.values()]
        await asyncio.gather(*waits, return_exceptions=True)

    def persisted_floor(self, name: str) -> int:
        """The lowest cursor of the stream's partitions in the state database (blocking)."""
        cursor = self.store.get_cursor(name)
        if cursor is None:
            cursor = self.log.last_seq
        return stream_floor(cursor, self.store.partition_cursors(name), self.partitions)

    def status(self) -> Mapping[str, Any]:
        return {
            "workers": self.workers,
            "partitions": self.partitions,
            "pids": self.pids,
            "restarts": sum(s.restarts for s in self._slots),
        }
