"""The Kafka journal (``journal.kafka``): capture publishes every record to a topic.

One Kafka transaction per :meth:`KafkaJournal.sync_to_disk`: the records of the
complete PostgreSQL transactions appended since the last one, plus this slot's
position record in the compacted topic ``<topic>-position`` (key = the slot name,
value ``{"seq", "commit_lsn", "end_lsn", "generation"}``). A PostgreSQL transaction is
published whole, never split across Kafka transactions: its records wait in memory
until its commit is appended. ``read_committed`` consumers see whole PostgreSQL
transactions or nothing. The record format is in docs/deployment.md ("The journal topic").

Fencing: the producer's ``transactional.id`` is fixed per topic and slot, so a new
leader's ``init_transactions`` fences the previous leader's producer (its commit
fails); and before publishing and again before returning a position to confirm, the
``fence`` callable checks the lease generation (it raises :class:`LeadershipLost`).
On becoming leader, :meth:`open` reads the position record: capture resumes after it,
so nothing the previous leader committed is published twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from .._errors import StateError
from .._record import OP_NAMES, Record
from ._locallog import FileSystem, Position

log = logging.getLogger("heliosdb_cdc.journal.kafka")

_FENCED = {
    KafkaError._FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    getattr(KafkaError, "PRODUCER_FENCED", KafkaError._FENCED),
}


def message_key(table: str, key: bytes) -> bytes:
    """The Kafka message key of a record: its table, a NUL byte, its key (canonical JSON)."""
    return table.encode() + b"\x00" + key


def record_headers(rec: Record, generation: int) -> list[tuple[str, bytes]]:
    return [
        ("heliosdb.seq", str(rec.seq).encode()),
        ("heliosdb.lsn", str(rec.lsn).encode()),
        ("heliosdb.ts_us", str(rec.ts_us).encode()),
        ("heliosdb.op", OP_NAMES.get(rec.op, "UNKNOWN").encode()),
        ("heliosdb.table", rec.table.encode()),
        ("heliosdb.index", str(rec.index).encode()),
        ("heliosdb.event_id", rec.event_id.encode()),
        ("heliosdb.generation", str(generation).encode()),
    ]


class KafkaJournal:
    """A :class:`~heliosdb_cdc.journal.JournalWriter` that publishes to a Kafka topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        slot: str,
        directory: str | Path,
        *,
        partitions: int = 6,
        replication_factor: int = 1,
        generation: int = 0,
        fence: Callable[[], None] = lambda: None,
        options: dict[str, Any] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.position_topic = f"{topic}-position"
        self.slot = slot
        self.dir = Path(directory)
        self.fs = FileSystem()  # capture's small files in ``dir``
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.generation = generation
        self.fence = fence
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self.transactional_id = f"heliosdb-cdc-capture-{topic}-{slot}"
        self.durable = Position(0, 0, 0)
        self._written = Position(0, 0, 0)
        self._next_seq = 1
        self._ready: list[Record] = []  # records of complete transactions, not yet published
        self._pending: list[Record] = []  # records of the open transaction
        self._producer: Any = None

    # -- JournalWriter -------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def written(self) -> Position:
        return self._written

    @property
    def size_bytes(self) -> int:
        return 0  # published at every batch; an open transaction waits in memory (see above)

    def append(
        self, events: list[Record], commits: list[tuple[int, int, int, int]], order: list[int]
    ) -> None:
        ei = ci = 0
        for kind in order:
            if kind == 0:
                self._pending.append(events[ei])
                ei += 1
            else:
                last_seq, commit_lsn, end_lsn, _ts = commits[ci]
                ci += 1
                self._ready.extend(self._pending)
                self._pending = []
                self._written = Position(last_seq, commit_lsn, end_lsn)
        if events:
            self._next_seq = events[-1].seq + 1

    def sync_to_disk(self) -> Position:
        """Publish the complete transactions appended as one Kafka transaction; return
        the position capture may confirm (raises LeadershipLost when no longer leader)."""
        if self._written == self.durable:
            return self.durable
        self.fence()
        producer = self._producer
        if producer is None:  # a failed transaction: only rewind_uncommitted (re-fencing) reopens
            raise StateError(
                "Kafka journal: not open (a transaction failed); capture resumes "
                "from the last published position",
                topic=self.topic,
            )
        target = self._written
        try:
            producer.begin_transaction()
            for rec in self._ready:
                self._produce(
                    producer,
                    self.topic,
                    message_key(rec.table, rec.key),
                    rec.body,
                    record_headers(rec, self.generation),
                    rec.ts_us // 1000,
                )
            marker = {
                "seq": target.seq,
                "commit_lsn": target.commit_lsn,
                "end_lsn": target.end_lsn,
                "generation": self.generation,
            }
            self._produce(producer, self.position_topic, self.slot.encode(), orjson.dumps(marker), [], 0)
            if producer.flush(self.timeout_s):
                raise StateError(
                    f"Kafka journal: records not delivered in {self.timeout_s}s", topic=self.topic
                )
            producer.commit_transaction(self.timeout_s)
        except KafkaException as exc:
            self._failed(exc.args[0])
        except StateError:
            self._producer = None
            raise
        self.fence()  # a leader that lost its lease meanwhile confirms nothing
        self._ready = []
        self.durable = target
        return target

    def rewind_uncommitted(self) -> None:
        """Forget what was not published; after a failure, fence the old producer again
        (only while still leader) and resume from the position record."""
        self._ready = []
        self._pending = []
        if self._producer is None:
            self.open()
        self._written = self.durable
        self._next_seq = self.durable.seq + 1

    # -- leadership ----------------------------------------------------------------
    def open(self) -> Position:
        """Become the topic's writer: create the topics, fence the previous leader's
        producer (aborting its open transaction), read where it stopped."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fence()
        self._ensure_topics()
        self._producer = None
        producer = self._open_producer()
        try:
            producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            self._producer = None
            raise StateError(
                f"Kafka journal: init_transactions failed: {exc.args[0].str()}", topic=self.topic
            ) from exc
        self.fence()
        pos = self._read_position()
        self.durable = self._written = pos
        self._next_seq = pos.seq + 1
        self._ready, self._pending = [], []
        log.info("Kafka journal %s: resuming after sequence %d", self.topic, pos.seq)
        return pos

    def close(self) -> None:
        self._producer = None  # an open transaction is aborted by the next leader's init

    # -- helpers -------------------------------------------------------------------
    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": log}
        conf.update(self.options)
        return conf

    def _open_producer(self) -> Any:
        if self._producer is None:
            conf = self._conf()
            conf.update(
                {
                    "transactional.id": self.transactional_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "retry.backoff.ms": 10,
                    "partitioner": "murmur2_random",  # the Java client's: per-key order
                    "message.timeout.ms": max(1000, int(self.timeout_s * 1000)),
                    "transaction.timeout.ms": max(60_000, int(self.timeout_s * 2000)),
                }
            )
            self._producer = Producer(conf)
        return self._producer

    @staticmethod
    def _produce(
        producer: Any, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], ts_ms: int
    ) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, timestamp=ts_ms)
                return
            except BufferError:
                producer.poll(0.05)

    def _failed(self, err: KafkaError) -> None:
        """A transaction failed: abort it; raise LeadershipLost when fenced by a new leader
        (and the lease says so), else StateError (capture retries from the last position)."""
        producer, self._producer = self._producer, None
        fenced = err.code() in _FENCED
        if not fenced and err.txn_requires_abort() and producer is not None:
            try:
                producer.abort_transaction(self.timeout_s)
            except KafkaException:
                pass
        self.fence()  # raises LeadershipLost when another instance leads now
        what = "fenced by another producer" if fenced else err.str()
        raise StateError(f"Kafka journal transaction failed: {what}", topic=self.topic)

    def _ensure_topics(self) -> None:
        admin = AdminClient(self._conf())
        wanted = {
            self.topic: (self.partitions, {}),
            self.position_topic: (1, {"cleanup.policy": "compact"}),
        }
        try:
            md = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise StateError(
                f"Kafka journal: cannot reach {self.bootstrap_servers}: {exc.args[0].str()}", topic=self.topic
            ) from exc
        missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
        if not missing:
            return
        new = [
            NewTopic(
                t,
                num_partitions=wanted[t][0],
                replication_factor=self.replication_factor,
                config=wanted[t][1],
            )
            for t in missing
        ]
        for t, fut in admin.create_topics(new, request_timeout=self.timeout_s).items():
            try:
                fut.result(timeout=self.timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StateError(
                        f"Kafka journal: cannot create topic {t}: {exc.args[0].str()}", topic=t
                    ) from exc
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            md = admin.list_topics(timeout=self.timeout_s)
            if all(
                t in md.topics
                and md.topics[t].partitions
                and all(p.leader >= 0 for p in md.topics[t].partitions.values())
                for t in missing
            ):
                return
            time.sleep(0.1)

    def _read_position(self) -> Position:
        """The slot's last position record (read_committed), or the start."""
        conf = self._conf()
        conf.update(
            {
                "group.id": f"heliosdb-cdc-position-reader-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        consumer = Consumer(conf)
        found: dict[str, int] | None = None
        try:
            consumer.assign([TopicPartition(self.position_topic, 0, 0)])
            key = self.slot.encode()
            deadline = time.monotonic() + self.timeout_s
            while True:
                if time.monotonic() > deadline:
                    raise StateError(
                        f"Kafka journal: reading {self.position_topic} did not finish in {self.timeout_s}s",
                        topic=self.position_topic,
                    )
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    raise StateError(
                        f"Kafka journal: reading {self.position_topic}: {err.str()}",
                        topic=self.position_topic,
                    )
                if msg.key() == key:
                    found = orjson.loads(msg.value() or b"{}")
        finally:
            consumer.close()
        if found is None:
            return Position(0, 0, 0)
        return Position(int(found["seq"]), int(found["commit_lsn"]), int(found["end_lsn"]))
