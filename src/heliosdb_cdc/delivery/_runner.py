"""A stream's delivery loop: local log -> route/filter/transform -> sink.

One reader walks the local log from the stream's cursor and spreads events over
``sink.lanes`` lanes by (table, key): a lane sends in order, so one row's
changes reach the destination in commit order while unrelated keys proceed in
parallel. Retries, the circuit breaker and dead letters act per lane.

The cursor is the last sequence below which every event is finished (delivered,
filtered or dead-lettered); it is checkpointed with the batch of delivery
records in one SQLite transaction every ``checkpoint_interval`` events or
``poll_interval_ms``.

An idle stream costs nothing: the reader sleeps until the local log is appended
to, the checkpointer until the cursor moves or a delivery is recorded, and the
queue gauges are computed when scraped. No task wakes on a timer while nothing
happens, so a thousand idle streams use no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from .._config import ExactlyOnceConfig, RetryConfig
from .._errors import SinkError
from .._metrics import (
    CHECKPOINT_TIME,
    DEAD_LETTERS,
    DELIVERY_DURATION,
    DELIVERY_TOTAL,
    END_TO_END,
    EVENTS_FILTERED,
    QUEUE_SIZE,
    RETRY_TOTAL,
    STREAM_CURSOR,
)
from ..journal import OP_CODES, OP_WATERMARK, Chunk, LocalLog, Record
from ..sinks import OutboundEvent, Outcome, Sink, SinkResult
from ..store import Store, sink_mark_key
from ._circuit import CircuitBreaker
from ._partition import PartitionSet

log = logging.getLogger("heliosdb_cdc.delivery")

_DEAD = object()  # marker: the event went to dead letters while being prepared

EventPredicate = Callable[[dict[str, Any]], bool]
BodyTransform = Callable[[dict[str, Any]], bytes]
# format != json: (event, canonical key, commit LSN) -> Formatted (pipeline/_formats.py)
EventFormatter = Callable[[dict[str, Any], bytes, int], Any]


def decode_event(body: bytes) -> dict[str, Any]:
    """The stored event as a dict; numbers with a fraction become exact Decimals."""
    result: dict[str, Any] = json.loads(body, parse_float=Decimal)
    return result


class _Lane:
    """Events of one lane, in order; the reader appends, the lane task drains in batches."""

    __slots__ = ("busy", "index", "items", "ready")

    def __init__(self, index: int = 0) -> None:
        self.items: deque[OutboundEvent] = deque()
        self.ready = asyncio.Event()
        self.index = index
        self.busy = False  # a batch of it is being delivered

    def put(self, ev: OutboundEvent) -> None:
        self.items.append(ev)
        if not self.ready.is_set():
            self.ready.set()


RATE_WINDOW_SECS = 6.0
RATE_SAMPLE_SECS = 0.05


@dataclass
class StreamStats:
    processed: int = 0
    filtered: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivery_at: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    delivered_window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))

    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        data = sorted(self.latencies)
        return round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1000, 2)

    def count_delivered(self, n: int, now: float) -> None:
        """Add ``n`` deliveries at monotonic time ``now``. A sample (time, count before)
        is kept at most every ``RATE_SAMPLE_SECS`` while deliveries happen, none while
        the stream is idle."""
        w = self.delivered_window
        if not w or now - w[-1][0] >= RATE_SAMPLE_SECS:
            w.append((now, self.delivered))
        self.delivered += n

    def rate(self, window: float = RATE_WINDOW_SECS) -> float:
        """Deliveries per second over the last ``window`` seconds (0 once they stop)."""
        start = time.monotonic() - window
        base = self.delivered
        for t, n in reversed(self.delivered_window):
            if t < start:
                break
            base = n  # the count before the earliest sample inside the window
        return (self.delivered - base) / window


class StreamRunner:
    def __init__(
        self,
        name: str,
        sink: Sink,
        log_: LocalLog,
        store: Store,
        *,
        endpoint: str,
        breaker: CircuitBreaker,
        retry: RetryConfig,
        exactly_once: ExactlyOnceConfig,
        route: Callable[[str, int], bool],
        predicate: EventPredicate | None = None,
        transform: BodyTransform | None = None,
        needs_event: bool = False,
        formatter: EventFormatter | None = None,
        checkpoint_interval: int = 1000,
        poll_interval: float = 0.05,
        max_inflight: int = 10_000,
        read_batch: int = 1000,
        partitions: PartitionSet | None = None,
    ) -> None:
        self.name = name
        self.sink = sink
        self.log = log_
        self.store = store
        self.endpoint = endpoint
        self.breaker = breaker
        self.retry = retry
        self.exactly_once = exactly_once
        self.route = route
        self.predicate = predicate
        self.transform = transform
        self.formatter = formatter
        self.needs_event = (
            needs_event or predicate is not None or transform is not None or formatter is not None
        )
        # a destination that keeps its own exactly-once position (Kafka transactions) or
        # one that is only in memory needs no delivery records
        self.record_deliveries = exactly_once.enabled and not sink.tracks_position
        self.checkpoint_interval = checkpoint_interval
        self.poll_interval = poll_interval
        self.max_inflight = max_inflight
        self.read_batch = read_batch
        # in a delivery worker: only these partitions' records, each past its own cursor,
        # and the cursor is checkpointed for each of them (delivery/_partition.py)
        self.partitions = partitions
        self._checkpoint_parts: list[int] = list(partitions.owned) if partitions else []
        self.stats = StreamStats()
        self.paused = False
        self.cursor = 0
        self._saved_cursor = 0
        self._last_read = 0
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._delivered_buf: list[tuple[str, str, int, float]] = []
        self._skip_ids: set[str] = set()
        self._lanes: list[_Lane | None] = []  # a lane and its task start with its first event
        # batches on (max_batch > 1): rows pending in a lane -> [lane, events pending] (_place)
        self._batch = 1
        self._filling = False
        self._fill = 0
        self._idle: set[int] = set()
        self._key_lanes: dict[tuple[str, bytes], list[int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._space = asyncio.Event()
        self._space.set()
        self._since_checkpoint = 0
        self._checkpoint_due = asyncio.Event()  # checkpoint_interval events finished
        self._dirty = asyncio.Event()  # the cursor moved or a delivery awaits its record
        # snapshot watermarks: keys changed inside open windows, chunks waiting for
        # their high watermark, and high-watermark sequences with events in flight
        self._windows: dict[str, set[tuple[str, bytes]]] = {}
        self._chunks: dict[str, Chunk] = {}
        self._groups: dict[int, list[Any]] = {}
        self.database = ""
        self._m_filtered = EVENTS_FILTERED.labels(name)
        self._m_duration = DELIVERY_DURATION.labels(name, endpoint)
        self._m_success = DELIVERY_TOTAL.labels(name, endpoint, "success")
        self._m_failure = DELIVERY_TOTAL.labels(name, endpoint, "failure")
        self._m_retry = RETRY_TOTAL.labels(name, endpoint)
        self._m_e2e = END_TO_END.labels(name)
        # exported at 0 from the start, so increase()/rate() see the first dead letters too
        self._m_dead = DEAD_LETTERS.labels(name, endpoint)
        # queue gauges are read when scraped, not set on a timer (idle streams cost nothing)
        ref = weakref.ref(self)
        QUEUE_SIZE.labels(name, "memory").set_function(lambda: _gauge(ref, "queue_memory"))
        QUEUE_SIZE.labels(name, "overflow").set_function(lambda: _gauge(ref, "queue_overflow"))

    # -- lifecycle ---------------------------------------------------------------
    async def start(self, cursor: int) -> None:
        """Start the stream's tasks; the destination is connected in the background, so
        an unreachable broker never blocks CREATE or the service's start."""
        self.cursor = self._saved_cursor = self._last_read = cursor
        self._stop.clear()
        self._lanes = [None] * max(1, self.sink.lanes)
        self._batch = max(1, self.sink.max_batch)
        self._filling = self._batch > 1 and len(self._lanes) > 1  # see _place
        self._fill = 0
        self._idle = set()
        self._key_lanes = {}
        self._tasks = [asyncio.create_task(self._reader(), name=f"{self.name}-reader")]
        self._tasks.append(asyncio.create_task(self._checkpointer(), name=f"{self.name}-ckpt"))

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop reading, let in-flight deliveries finish (up to the timeout), checkpoint."""
        self._stop.set()
        self._resume.set()
        reader = [t for t in self._tasks if t.get_name().endswith("-reader")]
        for t in reader:
            t.cancel()
        deadline = time.monotonic() + drain_timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await self._checkpoint()
        with contextlib.suppress(Exception):
            await self.sink.close()

    def pause(self) -> None:
        self.paused = True
        self._resume.clear()

    def resume(self) -> None:
        self.paused = False
        self._resume.set()

    # -- reader --------------------------------------------------------------------
    async def _connect(self) -> None:
        """Start the sink and find where the destination says we are; retry with backoff."""
        delay = 0.5
        while True:
            try:
                await self.sink.start()
                if self.sink.tracks_position:
                    seq = await self.sink.committed_sequence()
                    if seq is not None and seq > self.cursor:
                        log.info(
                            "stream %s: destination holds events through %d; resuming there",
                            self.name,
                            seq,
                        )
                        self.cursor = self._saved_cursor = self._last_read = seq
                if self.sink.resumes_by_mark:  # Kinesis: find what the last run put after its checkpoint
                    key = sink_mark_key(self.name)
                    stored = await asyncio.to_thread(self.store.get_meta, key)
                    await self.sink.recover(stored, self.log.last_seq)
                    # a mark from the start on: a crash in the first send finds its records too
                    mark = self.sink.resume_mark(self.cursor)
                    if mark is not None:
                        meta = {key: mark}
                        await asyncio.to_thread(self.store.checkpoint, self.name, self.cursor, (), meta)
                if self.record_deliveries:
                    self._skip_ids = await asyncio.to_thread(
                        self.store.delivered_after, self.endpoint, self.cursor
                    )
                if self.stats.last_error and self.stats.last_error.startswith("cannot start"):
                    self.stats.last_error = None
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                msg = f"cannot start the destination: {exc}"
                if self.stats.last_error != msg:
                    log.error("stream %s: %s; retrying", self.name, msg)
                self.stats.last_error = msg
                self.stats.last_error_at = time.time()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _reader(self) -> None:
        await self._connect()
        lanes = self._lanes
        n_lanes = len(lanes)
        pos = self.cursor + 1
        route = self.route
        part = self.partitions
        while not self._stop.is_set():
            if not self._resume.is_set():
                await self._resume.wait()
                continue
            if len(self._pending) >= self.max_inflight:
                self._space.clear()
                await self._space.wait()
                continue
            recs = await self.log.read(pos, self.read_batch)
            if not recs:
                await self.log.wait_beyond(pos - 1)  # sleeps until capture appends
                continue
            filtered = 0
            for rec in recs:
                pos = rec.seq + 1
                if part is not None and not part.takes(rec):
                    self._skip(rec.seq)  # another worker's, or delivered before a restart
                    continue
                if rec.op == OP_WATERMARK:
                    self._watermark(rec)
                    continue
                self.stats.processed += 1
                if self._windows and route(rec.table, rec.op):
                    for window in self._windows.values():
                        window.add((rec.table, rec.key))
                if not route(rec.table, rec.op):
                    filtered += 1
                    self._skip(rec.seq)
                    continue
                ev = self._outbound(rec)
                if ev is None or ev is _DEAD:
                    if ev is None:
                        filtered += 1
                    self._skip(rec.seq)
                    continue
                self._pending.append(rec.seq)
                assert isinstance(ev, OutboundEvent)
                if self._filling:
                    self._place(rec.table, rec.key).put(ev)
                    continue
                i = hash((rec.table, rec.key)) % n_lanes
                (lanes[i] or self._lane_at(i)).put(ev)
            if filtered:
                self.stats.filtered += filtered
                self._m_filtered.inc(filtered)
            self._last_read = pos - 1
            self._advance()

    # -- snapshots -------------------------------------------------------------------
    def register_chunk(self, chunk: Chunk) -> None:
        self._chunks[chunk.watermark] = chunk

    def _watermark(self, rec: Record) -> None:
        try:
            info = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            info = {}
        wm = info.get("id")
        if info.get("stream") != self.name or not wm:
            self._skip(rec.seq)
            return
        if info.get("kind") == "low":
            self._windows = {wm: set()}  # one snapshot per stream: older windows are stale
            self._skip(rec.seq)
            return
        window = self._windows.pop(wm, set())
        chunk = self._chunks.pop(wm, None)
        if chunk is None:  # from before a restart: its snapshot resumes with a new chunk
            self._skip(rec.seq)
            return
        events: list[OutboundEvent] = []
        for i, (key, row) in enumerate(chunk.rows):
            if (chunk.table, key) in window:
                continue  # changed while the chunk was read: the live event wins
            ev = self._read_event(rec, chunk.table, key, row, i)
            if ev is not None:
                events.append(ev)
        if not events:
            self._skip(rec.seq)
            if not chunk.done.done():
                chunk.done.set_result(0)
            return
        self._groups[rec.seq] = [len(events), chunk, len(events)]
        self._pending.append(rec.seq)
        n_lanes = len(self._lanes)
        for ev in events:
            if self._filling:
                self._place(ev.table, ev.key).put(ev)
            else:
                self._lane_at(hash((ev.table, ev.key)) % n_lanes).put(ev)

    def _read_event(
        self, rec: Record, table: str, key: bytes, row: dict[str, Any], i: int
    ) -> OutboundEvent | None:
        from datetime import UTC, datetime

        from .._event import dumps, event_dict, format_timestamp, read_event_id, snapshot_transaction_id

        event = event_dict(
            event_id=read_event_id(rec.lsn, i),
            timestamp=format_timestamp(datetime.fromtimestamp(rec.ts_us / 1e6, tz=UTC)),
            sequence=rec.seq,
            operation="READ",
            database=self.database,
            table=table,
            key=row["key"],
            value=row["value"],
            old_value=None,
            transaction_id=snapshot_transaction_id(rec.lsn),
        )
        body = dumps(event)
        if self.needs_event:
            event = decode_event(body)
            if self.predicate is not None and not self.predicate(event):
                return None
            if self.transform is not None:
                try:
                    body = self.transform(event)
                except Exception as exc:
                    self._note_error(
                        f"transformation failed: {exc}",
                        OutboundEvent(event["event_id"], rec.seq, table, "READ", key, body, ""),
                    )
                    return None
        out = OutboundEvent(
            event_id=event["event_id"],
            sequence=rec.seq,
            table=table,
            operation="READ",
            key=key,
            body=body,
            timestamp="",
            commit_ts_us=0,
            event=event if self.needs_event else None,
        )
        if self.formatter is not None:
            try:
                if not self._apply_format(out, event, rec.lsn):
                    return None
            except Exception as exc:
                self._note_error(f"format {getattr(self.formatter, 'name', '')} failed: {exc}", out)
                return None
        return out

    def _outbound(self, rec: Record) -> OutboundEvent | object | None:
        event_id = rec.event_id
        if event_id in self._skip_ids:
            return None
        body = rec.body
        event: dict[str, Any] | None = None
        if self.needs_event:
            try:
                event = decode_event(rec.body)
            except (ValueError, RecursionError) as exc:  # e.g. a json value nested too deep
                return self._failed_event(rec, None, f"event cannot be read for filters/transforms: {exc}")
            if self.predicate is not None:
                try:
                    if not self.predicate(event):
                        return None
                except Exception as exc:  # a predicate failing for one event
                    return self._failed_event(rec, event, f"predicate failed: {exc}")
            if self.transform is not None:
                try:
                    body = self.transform(event)
                except Exception as exc:
                    return self._failed_event(rec, event, f"transformation failed: {exc}")
        out = OutboundEvent(
            event_id=event_id,
            sequence=rec.seq,
            table=rec.table,
            operation=rec.operation,
            key=rec.key,
            body=body,
            timestamp="",
            commit_ts_us=rec.ts_us,
            event=event,
        )
        if self.formatter is not None and event is not None:
            try:
                if not self._apply_format(out, event, rec.lsn):
                    return None  # the format has no form for this event (Debezium: TRUNCATE)
            except Exception as exc:
                name = getattr(self.formatter, "name", "")
                return self._failed_event(rec, event, f"format {name} failed: {exc}")
        return out

    def _apply_format(self, out: OutboundEvent, event: dict[str, Any], lsn: int) -> bool:
        """The stream's format (debezium, cloudevents): body, headers, key of the record;
        False when the format skips the event."""
        assert self.formatter is not None
        f = self.formatter(event, out.key, lsn)
        if f is None:
            return False
        out.body = f.body
        if f.headers:
            out.headers = {**out.headers, **f.headers}
        if f.key is not None:
            out.key = f.key
        out.tombstone = f.tombstone
        return True

    def _failed_event(self, rec: Record, event: dict[str, Any] | None, error: str) -> object:
        """An event the stream cannot shape: to dead letters with the reason; the stream goes on."""
        ob = OutboundEvent(rec.event_id, rec.seq, rec.table, rec.operation, rec.key, rec.body, "")
        self._note_error(error, ob)
        self._dead_letter([(ob, error, 0)], time.time())
        return _DEAD

    def _skip(self, seq: int) -> None:
        # filtered/skipped events are finished at once; nothing to track unless
        # something before them is still in flight
        if self._pending:
            self._pending.append(seq)
            self._done.add(seq)

    def _complete(self, seq: int) -> None:
        self._done.add(seq)
        self._advance()

    def _advance(self) -> None:
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
        self.cursor = pending[0] - 1 if pending else self._last_read
        if len(pending) < self.max_inflight:
            self._space.set()
        if (self.cursor > self._saved_cursor or self._delivered_buf) and not self._dirty.is_set():
            self._dirty.set()

    # -- lanes ---------------------------------------------------------------------
    def _lane_at(self, i: int) -> _Lane:
        """Lane ``i``, started on first use: a stream with 100 lanes and a few busy keys
        keeps a few tasks, not 100."""
        lane = self._lanes[i]
        if lane is None:
            lane = self._lanes[i] = _Lane(i)
            self._tasks.append(asyncio.create_task(self._lane(lane), name=f"{self.name}-lane"))
        return lane

    def _place(self, table: str, key: bytes) -> _Lane:
        """The lane of an event when batches are on (``max_batch > 1``).

        A row whose events are still pending in a lane gets that lane again: one lane
        sends in order, so the row's changes arrive in commit order. Other rows fill one
        lane's next batch up to ``max_batch`` before the next lane is used, and go to an
        idle lane rather than queue behind a batch in flight: batches go out full under
        load instead of a few events each spread over every lane (by key hash), and at
        once when there is spare capacity.
        """
        k = (table, key)
        slot = self._key_lanes.get(k)
        if slot is not None:
            slot[1] += 1
            return self._lanes[slot[0]] or self._lane_at(slot[0])
        i = self._fill
        lane = self._lanes[i]
        if lane is not None and (len(lane.items) >= self._batch or (lane.busy and self._idle)):
            i = self._fill = self._idle.pop() if self._idle else (i + 1) % len(self._lanes)
        self._key_lanes[k] = [i, 1]
        return self._lanes[i] or self._lane_at(i)

    def _placed_done(self, batch: list[OutboundEvent]) -> None:
        """Rows of a finished batch with nothing left pending may go to any lane again."""
        key_lanes = self._key_lanes
        for e in batch:
            k = (e.table, e.key)
            slot = key_lanes.get(k)
            if slot is not None:
                slot[1] -= 1
                if slot[1] <= 0:
                    del key_lanes[k]

    async def _lane(self, lane: _Lane) -> None:
        max_batch = max(1, self.sink.max_batch)
        items = lane.items
        filling = self._filling
        while True:
            if not items:
                lane.ready.clear()
                if filling:
                    self._idle.add(lane.index)
                await lane.ready.wait()
                continue
            n = min(len(items), max_batch)
            batch = [items.popleft() for _ in range(n)]
            if filling:
                self._idle.discard(lane.index)
                lane.busy = True
                try:
                    await self._deliver(batch)
                finally:
                    lane.busy = False
                self._placed_done(batch)
            else:
                await self._deliver(batch)
            groups = self._groups
            for e in batch:
                seq = e.sequence
                group = groups.get(seq)
                if group is not None:
                    group[0] -= 1
                    if group[0] > 0:
                        continue
                    del groups[seq]
                    if not group[1].done.done():
                        group[1].done.set_result(group[2])
                self._done.add(seq)
            self._since_checkpoint += len(batch)
            if self._since_checkpoint >= self.checkpoint_interval:
                self._checkpoint_due.set()
            self._advance()

    async def _deliver(self, batch: list[OutboundEvent]) -> None:
        todo = batch
        attempt = 1
        first_at = time.time()
        retry = self.retry
        while todo:
            if not self.breaker.try_acquire():
                await self.breaker.acquire()
            t0 = time.perf_counter()
            try:
                results = await self.sink.send(todo)
            except SinkError as exc:
                results = [SinkResult(Outcome.RETRY, str(exc))] * len(todo)
            except Exception as exc:  # vendor errors must not escape a sink; be safe anyway
                log.exception("stream %s: sink %s raised", self.name, self.sink.name)
                results = [SinkResult(Outcome.RETRY, f"{type(exc).__name__}: {exc}")] * len(todo)
            elapsed = time.perf_counter() - t0
            self._m_duration.observe(elapsed)
            now = time.time()
            again: list[OutboundEvent] = []
            dead: list[tuple[OutboundEvent, str, int]] = []
            retry_after = 0.0
            any_fail = False
            n_ok = 0
            lats: list[float] = []
            for ev, res in zip(todo, results, strict=True):
                if res.outcome is Outcome.DELIVERED:
                    n_ok += 1
                    if self.record_deliveries:
                        self._delivered_buf.append((self.endpoint, ev.event_id, ev.sequence, now))
                    if ev.commit_ts_us:
                        lats.append(now - ev.commit_ts_us / 1_000_000)
                    continue
                any_fail = True
                self._note_error(res.error or res.outcome.value, ev)
                if res.outcome is Outcome.FAILED or attempt >= retry.max_attempts:
                    dead.append((ev, res.error or "failed", attempt))
                else:
                    again.append(ev)
                    retry_after = max(retry_after, res.retry_after or 0.0)
            if any_fail:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            if lats:
                self.stats.latencies.extend(lats)
                self._m_e2e.observe_many(lats)
            if n_ok:
                self._m_success.inc(n_ok)
                self.stats.count_delivered(n_ok, time.monotonic())
                self.stats.last_delivery_at = now
            n_fail = len(todo) - n_ok
            if n_fail:
                self._m_failure.inc(n_fail)
            if dead:
                self._dead_letter(dead, first_at)
            if not again:
                return
            attempt += 1
            self.stats.retried += len(again)
            self._m_retry.inc(len(again))
            delay = retry.delay_ms(attempt) / 1000.0
            if retry.jitter and delay:
                delay += random.uniform(0, delay * 0.25)
            await asyncio.sleep(max(delay, min(retry_after, retry.max_delay_ms / 1000.0)))
            todo = again

    def _note_error(self, error: str, ev: OutboundEvent) -> None:
        self.stats.last_error = error
        self.stats.last_error_at = time.time()
        log.warning(
            "delivery failed: %s",
            error,
            extra={"stream": self.name, "endpoint": self.endpoint, "event_id": ev.event_id},
        )

    def _dead_letter(self, items: list[tuple[OutboundEvent, str, int]], first_at: float) -> None:
        now = time.time()
        rows = [
            (
                self.name,
                self.endpoint,
                ev.event_id,
                ev.sequence,
                ev.table,
                ev.operation,
                ev.key,
                ev.body,
                error,
                attempts,
                first_at,
                now,
                self._default_event(ev),
            )
            for ev, error, attempts in items
        ]
        self.store.add_dead_letters(rows)
        self.stats.failed += len(items)
        self.stats.dead_lettered += len(items)
        self._m_dead.inc(len(items))

    def _default_event(self, ev: OutboundEvent) -> bytes | None:
        """What a replay formats again, when the stream has a format: the default event
        (a formatted body has lost the rest: CloudEvents headers, Debezium's tombstone)."""
        from .._event import dumps

        if self.formatter is None:
            return None
        # ev.event is set whenever a format ran; without it (the event could not be shaped)
        # the body is still the stored default event
        return dumps(ev.event) if ev.event is not None else ev.body

    # -- checkpoints ------------------------------------------------------------------
    async def _checkpointer(self) -> None:
        while True:
            # idle until there is something to save, then at most every poll interval
            # (sooner once checkpoint_interval events are finished)
            await self._dirty.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checkpoint_due.wait(), self.poll_interval)
            self._dirty.clear()
            self._checkpoint_due.clear()
            self._since_checkpoint = 0
            try:
                await self._checkpoint()
            except Exception as exc:
                self._note_error(f"checkpoint failed: {exc}", OutboundEvent("-", 0, "", "", b"", b"", ""))

    async def _checkpoint(self) -> None:
        cursor = self.cursor
        if cursor <= self._saved_cursor and not self._delivered_buf:
            return
        buf, self._delivered_buf = self._delivered_buf, []
        cursor = max(cursor, self._saved_cursor)
        # read with the cursor, before any await: the sink's mark matches this cursor
        mark = self.sink.resume_mark(cursor) if self.sink.resumes_by_mark else None
        meta = {sink_mark_key(self.name): mark} if mark is not None else None
        parts = self._checkpoint_parts
        try:
            await asyncio.to_thread(self.store.checkpoint, self.name, cursor, buf, meta, parts)
        except BaseException:
            # not saved: the delivery records go back (before those finished meanwhile), or a
            # restart after the next checkpoint would send their events again; and the next
            # checkpoint is due even if no other event finishes
            self._delivered_buf[:0] = buf
            self._dirty.set()
            raise
        self._saved_cursor = max(cursor, self._saved_cursor)
        STREAM_CURSOR.labels(self.name).set(self._saved_cursor)
        CHECKPOINT_TIME.labels(self.name).set(time.time())

    # -- status ----------------------------------------------------------------------
    @property
    def saved_cursor(self) -> int:
        """The cursor as committed to the state database (where a restart resumes)."""
        return self._saved_cursor

    @property
    def queue_memory(self) -> int:
        return len(self._pending)

    @property
    def queue_overflow(self) -> int:
        return max(0, self.log.last_seq - self._last_read)


def _gauge(ref: weakref.ReferenceType[StreamRunner], attr: str) -> float:
    runner = ref()
    return float(getattr(runner, attr)) if runner is not None else 0.0


def make_router(tables: set[str] | None, operations: set[str] | None) -> Callable[[str, int], bool]:
    """Fast routing on (table, operation code); ``None`` means any."""
    import fnmatch

    ops = {OP_CODES[o] for o in operations} if operations else None
    exact: set[str] = set()
    patterns: list[str] = []
    for t in tables or ():
        t = t[7:] if t.startswith("public.") else t
        if any(c in t for c in "*?["):
            patterns.append(t)
        else:
            exact.add(t)
    cache: dict[str, bool] = {}

    def table_ok(table: str) -> bool:
        hit = cache.get(table)
        if hit is None:
            hit = table in exact or any(fnmatch.fnmatchcase(table, p) for p in patterns)
            cache[table] = hit
        return hit

    if tables is None and ops is None:
        return lambda table, op: True
    if tables is None:
        return lambda table, op: op in ops  # type: ignore[operator]
    if ops is None:
        return lambda table, op: table_ok(table)
    return lambda table, op: op in ops and table_ok(table)
