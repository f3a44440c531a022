"""Delivery from the Kafka journal (``--role worker``): a consumer group feeds the runners.

One :class:`JournalConsumer` (a thread) per worker process reads the journal topic
that capture publishes (``read_committed``, ``enable.auto.commit=false``) as a member
of the workers' consumer group, and hands every record to each stream's
:class:`JournalSource`. A source is what a :class:`~heliosdb_cdc.delivery.StreamRunner`
reads instead of the local log: the same ``read`` / ``wait_beyond`` / ``last_seq``.

Numbering: the runner's cursor rule ("every record up to the cursor is finished")
needs one increasing sequence, but a worker reads several partitions whose
``heliosdb.seq`` values interleave. So a source numbers records in the order it hands
them out (local sequence 1, 2, ...) and keeps a map back to the journal's sequence:
:class:`GlobalSeqSink` gives the destination the journal's sequence, and
:class:`WorkerStore` writes delivery records and dead letters with it, so the
exactly-once records are the same whichever worker delivered.

Offsets: per partition, the consumer commits the offset of the first record that
some stream has not finished and checkpointed (its runner's saved cursor: the
delivery records are committed in the state database), or the end of what it read
when every stream is done. On revoke it stops handing out the partition's records,
waits for the streams to finish and checkpoint those in flight, commits, and only
then lets the partition go, so the next owner neither loses a record nor sends a
row's later change before an earlier one. On assignment it loads, per stream, the
event ids already delivered from the first record on, and skips them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._errors import StateError
from .._record import OP_CODES, Record
from ..sinks import OutboundEvent, Sink, SinkResult
from ..store import Store

log = logging.getLogger("heliosdb_cdc.delivery.kafka")

MAX_QUEUED = 20_000  # records waiting in one stream's source before the consumer pauses


def decode_message(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]) -> Record:
    """A journal message (docs/deployment.md, "The journal topic") as a :class:`Record`."""
    h = {k: v for k, v in headers}
    try:
        table = h["heliosdb.table"].decode()
        raw_key = key or b""
        nul = raw_key.find(b"\x00")
        return Record(
            int(h["heliosdb.seq"]),
            int(h["heliosdb.lsn"]),
            int(h["heliosdb.ts_us"]),
            OP_CODES[h["heliosdb.op"].decode()],
            table,
            raw_key[nul + 1 :] if nul >= 0 else b"",
            value or b"",
            int(h["heliosdb.index"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"not a journal record: header {exc} missing or malformed") from exc


class _Entry:
    """One record of a partition in one source: its offset, and its local sequence once
    handed to the runner (0 before)."""

    __slots__ = ("local", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.local = 0


class JournalSource:
    """One stream's view of the records this worker consumes (the runner's ``log``)."""

    def __init__(self, name: str, endpoint: str, dedupe: bool) -> None:
        self.name = name
        self.endpoint = endpoint
        self.dedupe = dedupe  # the stream keeps delivery records: skip what was delivered
        self.saved: Callable[[], int] = lambda: 0  # the runner's checkpointed cursor
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, _Entry, Record]] = deque()
        self._parts: dict[int, deque[_Entry]] = {}  # partition -> its records not yet finished
        self._global: dict[int, int] = {}  # local sequence -> journal sequence
        self._next_local = 1
        self._skip: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- the runner's side (event loop) -------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._next_local - 1 + len(self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def read(self, from_seq: int, max_n: int) -> list[Record]:
        out: list[Record] = []
        with self._lock:
            q = self._queue
            while q and len(out) < max_n:
                _p, entry, rec = q.popleft()
                local = self._next_local
                self._next_local += 1
                entry.local = local
                self._global[local] = rec.seq
                out.append(rec._replace(seq=local))
        return out

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> None:
        if self._queue:
            return
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        try:
            if self._queue:
                return
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)

    def read_memory(self, from_seq: int, max_n: int) -> list[Record] | None:
        return None

    def global_seq(self, local: int) -> int:
        return self._global.get(local, local)

    def forget_through(self, local: int) -> None:
        """The map back to journal sequences is not needed at or below a saved cursor."""
        g = self._global
        with self._lock:
            while g:
                first = next(iter(g))
                if first > local:
                    break
                del g[first]

    # -- the consumer's side (its thread) -----------------------------------------------
    def push(self, partition: int, offset: int, rec: Record) -> None:
        if self._skip and rec.event_id in self._skip:
            self._skip.discard(rec.event_id)
            return  # delivered before (another worker, or before a restart)
        entry = _Entry(offset)
        with self._lock:
            self._parts.setdefault(partition, deque()).append(entry)
            self._queue.append((partition, entry, rec))

    def wake(self) -> None:
        loop = self._loop
        if loop is not None and self._waiters and self._queue:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def load_delivered(self, store: Store, after_seq: int) -> None:
        if self.dedupe:
            found = store.delivered_after(self.endpoint, after_seq)
            self._skip |= found
            log.info(
                "stream %s: %d event(s) after sequence %d delivered before: skipped",
                self.name,
                len(found),
                after_seq,
            )

    def first_unfinished(self, partition: int) -> int | None:
        """The offset of the partition's first record this stream has not finished and
        checkpointed, or None (all of them are)."""
        saved = self.saved()
        with self._lock:
            entries = self._parts.get(partition)
            if not entries:
                return None
            while entries and 0 < entries[0].local <= saved:
                entries.popleft()
            return entries[0].offset if entries else None

    def in_flight(self, partition: int) -> bool:
        """Whether records of the partition were handed out and are not finished."""
        saved = self.saved()
        with self._lock:
            entries = self._parts.get(partition)
            return any(e.local > saved and e.local > 0 for e in entries or ())

    def withdraw(self, partitions: set[int]) -> dict[int, int]:
        """Stop handing out the partitions' records (revoked): drop the queued ones;
        return the first dropped offset per partition (those records are not finished)."""
        first: dict[int, int] = {}
        with self._lock:
            self._queue = deque(item for item in self._queue if item[0] not in partitions)
            for p in partitions:
                entries = self._parts.get(p)
                if entries:
                    dropped = [e.offset for e in entries if not e.local]
                    if dropped:
                        first[p] = dropped[0]
                    self._parts[p] = deque(e for e in entries if e.local)
        return first

    def release(self, partitions: set[int]) -> None:
        with self._lock:
            for p in partitions:
                self._parts.pop(p, None)


class GlobalSeqSink:
    """The stream's sink, given the journal's sequence instead of the local one."""

    def __init__(self, inner: Sink, source: JournalSource) -> None:
        self._inner = inner
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        g = self._source.global_seq
        return await self._inner.send([replace(ev, sequence=g(ev.sequence)) for ev in batch])


class WorkerStore:
    """The state store as a worker's runner sees it: journal sequences in delivery records
    and dead letters; exactly-once skips come from the source (:meth:`JournalSource.
    load_delivered`), and the stream's cursor in the catalog is informational (each worker
    resumes from the group's committed offsets)."""

    def __init__(self, inner: Store, source: JournalSource) -> None:
        self._inner = inner
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def checkpoint(
        self,
        stream: str,
        seq: int,
        deliveries: Iterable[tuple[str, str, int, float]] = (),
        meta: Mapping[str, str] | None = None,
        partitions: Sequence[int] = (),
    ) -> None:
        # the journal topic's partitions are the consumer group's, not the local log's:
        # a worker-role stream keeps one cursor (``partitions`` is always empty here)
        g = self._source.global_seq
        rows = [(e, i, g(s), t) for e, i, s, t in deliveries]
        self._inner.checkpoint(stream, g(seq), rows, meta)
        self._source.forget_through(seq - 1)

    def delivered_after(self, endpoint: str, seq: int) -> set[str]:
        return set()

    def add_dead_letters(self, rows: Sequence[tuple[Any, ...]]) -> None:
        g = self._source.global_seq
        self._inner.add_dead_letters([(*r[:3], g(r[3]), *r[4:]) for r in rows])


class JournalConsumer:
    """The worker's member of the consumer group: a thread that polls, fans records out
    to the streams' sources, commits offsets and handles rebalances (see the module)."""

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        store: Store,
        *,
        drain_secs: float = 30.0,
        commit_interval: float = 0.2,
    ) -> None:
        self.conf = conf
        self.topic = topic
        self.store = store
        self.drain_secs = drain_secs
        self.commit_interval = commit_interval
        self._sources: dict[str, JournalSource] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self.assigned: set[int] = set()
        self._next: dict[int, int] = {}  # partition -> offset after the last record read
        self._committed: dict[int, int] = {}
        self._fresh: set[int] = set()  # assigned, no record read yet: load delivered ids
        self._paused = False
        self.rebalances = 0
        self.error: str | None = None

    # -- streams --------------------------------------------------------------------------
    def add_source(self, source: JournalSource) -> None:
        with self._lock:
            self._sources[source.name] = source
            self._fresh |= self.assigned  # its delivered ids: loaded with the next records

    def remove_source(self, name: str) -> None:
        with self._lock:
            self._sources.pop(name, None)

    def sources(self) -> list[JournalSource]:
        with self._lock:
            return list(self._sources.values())

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({**self.conf, "on_commit": self._on_commit})
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._thread = threading.Thread(target=self._run, name="journal-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what was handed out, commit, leave the group (blocking)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.drain_secs + 30)
            self._thread = None

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        last_commit = time.monotonic()
        try:
            while not self._stop.is_set():
                self._flow_control()
                msgs = consumer.consume(500, 0.1)
                if msgs:
                    self._dispatch(msgs)
                if time.monotonic() - last_commit >= self.commit_interval:
                    self._commit(self.assigned, asynchronous=True)
                    last_commit = time.monotonic()
            self._revoke(set(self.assigned))
        except Exception as exc:  # the worker exits on it (see WorkerRole)
            self.error = f"journal consumer failed: {exc}"
            log.exception("journal consumer failed")
        finally:
            try:
                consumer.close()
            except Exception as exc:
                log.warning("closing the journal consumer: %s", exc)

    def _dispatch(self, msgs: list[Any]) -> None:
        from confluent_kafka import KafkaError

        sources = self.sources()
        batch: list[tuple[int, int, Record]] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("journal consumer: %s", err.str())
                continue
            p = m.partition()
            if p not in self.assigned:
                continue
            try:
                rec = decode_message(m.key(), m.value(), m.headers() or [])
            except StateError as exc:
                log.error("journal partition %d offset %d skipped: %s", p, m.offset(), exc)
                self._next[p] = m.offset() + 1
                continue
            batch.append((p, m.offset(), rec))
        fresh = {p for p, _o, _r in batch if p in self._fresh}
        if fresh:
            first = min(r.seq for p, _o, r in batch if p in fresh)
            for s in sources:
                s.load_delivered(self.store, first - 1)
            self._fresh -= fresh
        for p, offset, rec in batch:
            for s in sources:
                s.push(p, offset, rec)
            self._next[p] = offset + 1
        for s in sources:
            s.wake()

    def _flow_control(self) -> None:
        """Pause fetching while a stream has MAX_QUEUED records waiting (a paused or slow
        stream holds the others: offsets cannot pass its unfinished records anyway)."""
        full = any(s.queued >= MAX_QUEUED for s in self.sources())
        if full == self._paused or not self.assigned:
            return
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in self.assigned]
        if full:
            self._consumer.pause(tps)
        else:
            self._consumer.resume(tps)
        self._paused = full

    def _offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        sources = self.sources()
        out: dict[int, int] = {}
        for p in partitions:
            if p not in self._next:
                continue
            firsts = [o for o in (s.first_unfinished(p) for s in sources) if o is not None]
            out[p] = min(firsts) if firsts else self._next[p]
        return out

    def _commit(self, partitions: Iterable[int], asynchronous: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = {p: o for p, o in self._offsets(partitions).items() if o > self._committed.get(p, -1)}
        if not offsets:
            return
        log.debug("committing journal offsets %s", offsets)
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("committing journal offsets: %s", exc.args[0].str())
            return
        self._committed.update(offsets)

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            log.warning("committing journal offsets failed: %s", err or failed[0].error)
            for tp in partitions:  # committed again with the next round
                self._committed.pop(tp.partition, None)
        else:
            log.debug("journal offsets committed: %s", {tp.partition: tp.offset for tp in partitions})

    # -- rebalances (called inside consume, on the thread) ---------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        ps = {tp.partition for tp in partitions}
        self.rebalances += 1
        self.assigned |= ps
        self._fresh |= ps
        for p in ps:
            self._next.pop(p, None)
            self._committed.pop(p, None)
        self._paused = False  # a new assignment fetches
        log.info("journal partitions assigned: %s", sorted(ps))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._revoke({tp.partition for tp in partitions})

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        ps = {tp.partition for tp in partitions}
        log.warning("journal partitions lost: %s (their records go to another worker)", sorted(ps))
        for s in self.sources():
            s.withdraw(ps)
            s.release(ps)
        self._forget(ps)

    def _revoke(self, ps: set[int]) -> None:
        """Stop handing out, let the streams finish and checkpoint, commit, release."""
        ps &= self.assigned
        if not ps:
            return
        sources = self.sources()
        first_withdrawn: dict[int, int] = {}
        for s in sources:
            for p, o in s.withdraw(ps).items():
                first_withdrawn[p] = min(o, first_withdrawn.get(p, o))
        deadline = time.monotonic() + self.drain_secs
        while any(s.in_flight(p) for s in sources for p in ps):
            if time.monotonic() > deadline:
                log.warning(
                    "journal partitions %s revoked with deliveries still in flight after %.0fs: "
                    "their next owner sends them again",
                    sorted(ps),
                    self.drain_secs,
                )
                break
            time.sleep(0.02)
        offsets = self._offsets(ps)
        for p, o in first_withdrawn.items():  # a withdrawn record is not finished
            offsets[p] = min(o, offsets.get(p, o))
        self._commit_exact(offsets)
        for s in sources:
            s.release(ps)
        self._forget(ps)
        log.info("journal partitions released: %s", sorted(ps))

    def _commit_exact(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        todo = {p: o for p, o in offsets.items() if o > self._committed.get(p, -1)}
        if not todo:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in todo.items()], asynchronous=False
            )
        except KafkaException as exc:
            log.warning("committing journal offsets on release: %s", exc.args[0].str())

    def _forget(self, ps: set[int]) -> None:
        self.assigned -= ps
        self._fresh -= ps
        for p in ps:
            self._next.pop(p, None)
            self._committed.pop(p, None)
