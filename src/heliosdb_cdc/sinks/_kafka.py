"""Kafka destination (confluent-kafka / librdkafka), exactly once with transactions.

Each record: key = the event's key (canonical JSON; Debezium's key with FORMAT
DEBEZIUM), value = the body (event JSON, Avro with FORMAT AVRO, Debezium's
envelope, a CloudEvent; with ``debezium_tombstones`` a null-valued tombstone
follows each delete), headers ``heliosdb.event_id``,
``heliosdb.table``, ``heliosdb.operation``, ``heliosdb.sequence`` (+ the event's
own headers, + the Avro schema headers for self-describing Avro). Records of
one key go to one partition (murmur2, the Java client's partitioner), so they
keep their order.

Exactly once (``transactional=True``, the default): ``transactional.id`` is
``heliosdb-cdc-<stream>``; every :meth:`KafkaSink.send` is one Kafka
transaction holding the batch plus one record in the compacted topic
``heliosdb-cdc-offsets`` (key = stream name, value = ``{"sequence": N}``, the
last sequence of the batch). Either both become visible to ``read_committed``
consumers or neither does. After a crash, :meth:`KafkaSink.committed_sequence`
returns N: the dispatcher resumes after it. Starting the sink (same
transactional id) fences the old producer and aborts its open transaction.

Options (``Destination.options``): ``partitions`` (3), ``replication_factor``
(1), ``auto_create_topic`` (true), ``offsets_topic``, ``timeout_s`` (30: bound
of one send, of connecting, of a transaction commit), ``schema_registry_url``
(+ ``schema_registry_user``/``schema_registry_password``,
``subject_name_strategy``: ``topic_record`` (default) | ``topic`` |
``record``); any key containing a dot (``security.protocol``,
``sasl.mechanism``, ``ssl.ca.location``, ``compression.type``...) is passed to
librdkafka as is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from .._config import Destination, StreamConfig
from .._errors import SinkError
from ._avro import (
    AvroEncoder,
    AvroSchema,
    AvroSchemaRegistry,
    ConfluentSchemaRegistry,
    SchemaRegistryUnavailable,
)
from ._base import DELIVERED, OutboundEvent, Outcome, Sink, SinkResult

if TYPE_CHECKING:
    from ._registry import SinkContext

_T = TypeVar("_T")

log = logging.getLogger("heliosdb_cdc.sinks.kafka")

OFFSETS_TOPIC = "heliosdb-cdc-offsets"

# librdkafka settings every client (producer, admin, consumer) needs
_COMMON_PREFIXES = (
    "security.",
    "sasl.",
    "ssl.",
    "ssl_",
    "client.",
    "socket.",
    "broker.",
    "reconnect.",
    "api.version",
    "enable.ssl",
    "oauthbearer",
    "debug",
    "log_level",
    "metadata.",
    "topic.metadata",
    "connections.max",
    "client.dns",
)

# delivery errors that retrying cannot fix: the event goes to dead letters
_PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
}


def _is_permanent(err: KafkaError) -> bool:
    return err.code() in _PERMANENT


@dataclass(slots=True)
class _Record:
    index: int
    key: bytes
    value: bytes | None  # None: a tombstone (Debezium format, after a delete)
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None
    sequence: int


class KafkaSink(Sink):
    """Sends batches to one Kafka topic; one transaction per batch when transactional."""

    def __init__(
        self,
        destination: Destination,
        stream_name: str,
        transactional: bool = True,
        *,
        format: str = "json",
        avro: AvroEncoder | None = None,
        name: str | None = None,
        max_batch: int = 5000,
        timeout_s: float | None = None,
    ) -> None:
        if not destination.topic:
            raise SinkError("a Kafka destination needs a topic", stream=stream_name)
        opts = dict(destination.options)
        self.destination = destination
        self.stream_name = stream_name
        self.topic: str = destination.topic
        self.transactional = bool(opts.pop("transactional", transactional))
        # a transactional producer commits its position with the messages: the
        # runner needs no delivery records for it
        self.tracks_position = self.transactional
        self.name = name or f"kafka:{self.topic}"
        self.lanes = 1
        self.max_batch = int(opts.pop("max_batch", max_batch))
        self.timeout_s = float(timeout_s if timeout_s is not None else opts.pop("timeout_s", 30))
        opts.pop("timeout_s", None)
        self.partitions = int(opts.pop("partitions", 3))
        self.replication_factor = int(opts.pop("replication_factor", 1))
        self.auto_create_topic = bool(opts.pop("auto_create_topic", True))
        self.offsets_topic = str(opts.pop("offsets_topic", OFFSETS_TOPIC))
        self.transactional_id = f"heliosdb-cdc-{stream_name}"
        self.format = format.lower()
        registry_url = opts.pop("schema_registry_url", None)
        user = opts.pop("schema_registry_user", None)
        password = opts.pop("schema_registry_password", None)
        strategy = str(opts.pop("subject_name_strategy", "topic_record"))
        self._librdkafka = {k: v for k, v in opts.items() if "." in k or k in ("debug",)}
        self.avro: AvroEncoder | None = None
        if self.format == "avro":
            confluent = None
            if registry_url:
                auth = (str(user), str(password)) if user is not None else None
                confluent = ConfluentSchemaRegistry(str(registry_url), auth=auth)
            self.avro = avro or AvroEncoder(
                AvroSchemaRegistry(), confluent, subject=self._subject_fn(strategy)
            )
        self._producer: Any = None
        self._ready = False
        self._lock = asyncio.Lock()
        self._last_error: str | None = None
        self._last_committed: int | None = None
        self._uncertain = False  # a commit whose outcome is unknown: check before resending
        self._closed = False
        # librdkafka calls block up to timeout_s while a broker is unreachable: they run on
        # this sink's own threads, never on the event loop's default executor, which the
        # service shares with its catalog and PostgreSQL calls (a few unreachable brokers
        # must not stall CREATE, DROP or the status of every other stream)
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def for_stream(cls, stream: StreamConfig, **kw: Any) -> KafkaSink:
        return cls(stream.destination, stream.name, format=stream.format, **kw)

    def _subject_fn(self, strategy: str) -> Callable[[AvroSchema], str]:
        def subject(schema: AvroSchema) -> str:
            full = f"{schema.schema['namespace']}.{schema.schema['name']}"
            if strategy == "topic":
                return f"{self.topic}-value"
            if strategy == "record":
                return full
            return f"{self.topic}-{full}"

        return subject

    def set_columns(self, table: str, columns: Sequence[dict[str, Any]]) -> None:
        """Column types of a table (name, type_oid, key[, typmod]) for FORMAT AVRO."""
        if self.avro is not None:
            self.avro.set_columns(table, columns)

    # ------------------------------------------------------------------ config

    def _common_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.destination.address,
            "socket.connection.setup.timeout.ms": max(1000, int(self.timeout_s * 1000)),
            "error_cb": self._on_error,
            "logger": log,
        }
        for k, v in self._librdkafka.items():
            if k.startswith(_COMMON_PREFIXES):
                conf[k] = v
        return conf

    def _producer_conf(self) -> dict[str, Any]:
        timeout_ms = max(1000, int(self.timeout_s * 1000))
        conf = self._common_conf()
        conf.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # after a commit, the next transaction's AddPartitionsToTxn is answered
                # CONCURRENT_TRANSACTIONS until the commit markers are written; librdkafka
                # retries after retry.backoff.ms (100 ms by default, backing off exponentially
                # up to retry.backoff.max.ms), which made every small transaction take ~100 ms
                "retry.backoff.ms": 10,
                "batch.num.messages": 10000,
                "partitioner": "murmur2_random",
                "message.timeout.ms": timeout_ms,
                "queue.buffering.max.messages": max(100_000, self.max_batch * 4),
            }
        )
        if self.transactional:
            conf["transactional.id"] = self.transactional_id
            conf["transaction.timeout.ms"] = max(60_000, timeout_ms * 2)
        conf.update(self._librdkafka)
        return conf

    def _on_error(self, err: KafkaError) -> None:
        self._last_error = str(err.str())
        if err.fatal():
            log.error("kafka fatal error: %s", err.str())

    def _unreachable(self, what: str, exc: BaseException | str) -> str:
        detail = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else str(exc)
        extra = f"; last client error: {self._last_error}" if self._last_error else ""
        return f"Kafka {what} failed for {self.destination.address} (topic {self.topic}): {detail}{extra}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the producer and, if the broker answers, the topics and the transaction.

        An unreachable broker is not an error here (sends return RETRY until it
        answers); a topic that is missing and may not be created raises SinkError.
        """
        self._closed = False
        if self._ready:
            return
        async with self._lock:
            try:
                await self._in_thread(self._ensure_ready_sync)
            except _Transient as exc:
                log.warning("%s; will retry on send", exc)

    async def close(self) -> None:
        async with self._lock:
            p, self._producer, self._ready = self._producer, None, False
            self._closed = True
            if p is not None:
                await self._in_thread(p.flush, 5.0)
            executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=False)  # a call still blocked ends on its own timeout

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(4, thread_name_prefix=f"kafka-{self.stream_name}")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _ensure_ready_sync(self) -> None:
        if self._ready:
            return
        if self._producer is None:
            self._producer = Producer(self._producer_conf())
        self._ensure_topics_sync()
        if self.transactional:
            try:
                self._producer.init_transactions(self.timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    self._producer = None
                raise _Transient(self._unreachable("init_transactions", exc)) from exc
        self._ready = True

    def _ensure_topics_sync(self) -> None:
        admin = AdminClient(self._common_conf())
        wanted: list[tuple[str, int, dict[str, str]]] = [(self.topic, self.partitions, {})]
        if self.transactional:
            wanted.append((self.offsets_topic, 1, {"cleanup.policy": "compact"}))
        try:
            md = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise _Transient(self._unreachable("metadata request", exc)) from exc
        missing = [w for w in wanted if w[0] not in md.topics or md.topics[w[0]].error is not None]
        if not missing:
            return
        if not self.auto_create_topic:
            names = ", ".join(w[0] for w in missing)
            raise SinkError(
                f"Kafka topic(s) {names} do not exist and auto_create_topic is off",
                destination=self.destination.address,
            )
        new = [
            NewTopic(
                t,
                num_partitions=n,
                replication_factor=self.replication_factor,
                config=cfg,
            )
            for t, n, cfg in missing
        ]
        for t, fut in admin.create_topics(new, request_timeout=self.timeout_s).items():
            try:
                fut.result(timeout=self.timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if err.retriable() or err.code() in (
                    KafkaError._TRANSPORT,
                    KafkaError._TIMED_OUT,
                ):
                    raise _Transient(self._unreachable(f"create topic {t}", exc)) from exc
                raise SinkError(
                    f"Kafka topic {t!r} does not exist and cannot be created: {err.str()}",
                    destination=self.destination.address,
                ) from exc
        # wait until the new topics have leaders, so the first produce does not race
        deadline = time.monotonic() + self.timeout_s
        created = {t for t, _, _ in missing}
        while time.monotonic() < deadline:
            md = admin.list_topics(timeout=self.timeout_s)
            if all(
                n in md.topics
                and md.topics[n].error is None
                and md.topics[n].partitions
                and all(p.leader >= 0 for p in md.topics[n].partitions.values())
                for n in created
            ):
                return
            time.sleep(0.1)

    # ------------------------------------------------------------------ send

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        if not batch:
            return []
        if self._closed:
            raise SinkError("Kafka sink is closed", destination=self.destination.address)
        results: list[SinkResult | None] = [None] * len(batch)
        records: list[_Record] = []
        for i, ev in enumerate(batch):
            headers = [
                ("heliosdb.event_id", ev.event_id.encode()),
                ("heliosdb.table", ev.table.encode()),
                ("heliosdb.operation", ev.operation.encode()),
                ("heliosdb.sequence", str(ev.sequence).encode()),
            ]
            value = ev.body
            if self.avro is not None:
                try:
                    value, extra = await self.avro.encode(ev)
                except SchemaRegistryUnavailable as exc:
                    return [SinkResult(Outcome.RETRY, error=str(exc))] * len(batch)
                except SinkError as exc:
                    results[i] = SinkResult(Outcome.FAILED, error=str(exc))
                    continue
                headers.extend((k, v.encode()) for k, v in extra.items())
            headers.extend((k, v.encode()) for k, v in ev.headers.items())
            ts = ev.commit_ts_us // 1000 if ev.commit_ts_us else None
            records.append(_Record(i, ev.key, value, headers, ts, ev.sequence))
            if ev.tombstone:  # same key, null value: log compaction may drop the row's records
                records.append(_Record(i, ev.key, None, headers, ts, ev.sequence))
        last_seq = max(ev.sequence for ev in batch)
        async with self._lock:
            if self._closed:
                raise SinkError("Kafka sink is closed", destination=self.destination.address)
            out = await self._in_thread(self._send_sync, records, results, last_seq)
        return out

    def _send_sync(
        self, records: list[_Record], results: list[SinkResult | None], last_seq: int
    ) -> list[SinkResult]:
        try:
            self._ensure_ready_sync()
        except (_Transient, SinkError) as exc:
            return [r or SinkResult(Outcome.RETRY, error=str(exc)) for r in results]
        if self.transactional and self._uncertain:
            # the last commit timed out: init_transactions (above) has let the
            # coordinator finish or abort it; what it committed is not resent
            try:
                committed = self._read_committed_sync()
            except SinkError as exc:
                return [r or SinkResult(Outcome.RETRY, error=str(exc)) for r in results]
            self._uncertain = False
            if committed is not None:
                for r in records:
                    if r.sequence <= committed and results[r.index] is None:
                        results[r.index] = DELIVERED
        if self.transactional:
            return self._send_txn(records, results, last_seq)
        return self._send_plain(records, results)

    def _produce(
        self,
        rec: _Record,
        results: list[SinkResult | None],
        errors: dict[int, KafkaError],
    ) -> bool:
        """Queue one record; False when librdkafka refused it outright (FAILED)."""
        p = self._producer

        def on_delivery(err: KafkaError | None, _msg: Any, idx: int = rec.index) -> None:
            if err is not None:
                errors[idx] = err

        while True:
            try:
                p.produce(
                    self.topic,
                    value=rec.value,
                    key=rec.key,
                    headers=rec.headers,
                    timestamp=rec.timestamp_ms or 0,
                    on_delivery=on_delivery,
                )
                return True
            except BufferError:
                p.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0]
                results[rec.index] = SinkResult(
                    Outcome.FAILED if _is_permanent(err) else Outcome.RETRY,
                    error=f"Kafka refused record ({len(rec.value or b'')} bytes): {err.str()}",
                )
                return False

    def _send_plain(self, records: list[_Record], results: list[SinkResult | None]) -> list[SinkResult]:
        errors: dict[int, KafkaError] = {}
        queued = [r.index for r in records if self._produce(r, results, errors)]
        remaining = self._producer.flush(self.timeout_s + 5)
        for idx in queued:
            err = errors.get(idx)
            if err is not None:
                outcome = Outcome.FAILED if _is_permanent(err) else Outcome.RETRY
                results[idx] = SinkResult(outcome, error=f"Kafka delivery failed: {err.str()}")
            elif remaining:
                results[idx] = SinkResult(
                    Outcome.RETRY,
                    error=self._unreachable("delivery", f"not confirmed in {self.timeout_s}s"),
                )
            else:
                results[idx] = DELIVERED
        return [r or DELIVERED for r in results]

    def _send_txn(
        self, records: list[_Record], results: list[SinkResult | None], last_seq: int
    ) -> list[SinkResult]:
        p = self._producer
        pending = [r for r in records if results[r.index] is None]
        for _attempt in range(3):
            errors: dict[int, KafkaError] = {}
            queued: list[_Record] = []
            try:
                p.begin_transaction()
                queued = [r for r in pending if self._produce(r, results, errors)]
                marker = orjson.dumps({"sequence": last_seq, "topic": self.topic})
                p.produce(self.offsets_topic, key=self.stream_name.encode(), value=marker)
                remaining = p.flush(self.timeout_s)
                if errors or remaining:
                    raise _Abort()
            except (_Abort, KafkaException) as exc:
                reason = self._abort(exc)
                permanent = {i: e for i, e in errors.items() if _is_permanent(e)}
                if permanent:
                    for r in queued:
                        if r.index in permanent:
                            err = permanent[r.index]
                            results[r.index] = SinkResult(
                                Outcome.FAILED,
                                error=f"Kafka refused record ({len(r.value or b'')} bytes): {err.str()}",
                            )
                    pending = [r for r in pending if r.index not in permanent]
                    continue  # retry the transaction without the refused records
                if errors:
                    reason = "; ".join(sorted({e.str() for e in errors.values()})) + f" ({reason})"
                return [
                    r or SinkResult(Outcome.RETRY, error=self._unreachable("transaction", reason))
                    for r in results
                ]
            else:
                failure = self._commit()
                if failure is not None:
                    return [
                        r or SinkResult(Outcome.RETRY, error=self._unreachable("commit", failure))
                        for r in results
                    ]
                self._last_committed = last_seq
                for r in queued:
                    results[r.index] = DELIVERED
                return [r or DELIVERED for r in results]
        return [r or SinkResult(Outcome.RETRY, error="Kafka transaction kept failing") for r in results]

    def _commit(self) -> str | None:
        """Commit the open transaction; None when committed, else why not."""
        p = self._producer
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                p.commit_transaction(max(1.0, deadline - time.monotonic()))
                return None
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and time.monotonic() < deadline:
                    continue  # librdkafka allows retrying a commit that timed out
                if err.txn_requires_abort():
                    return self._abort(exc)
                # fatal, or still unanswered: the commit may or may not have happened
                self._producer, self._ready, self._uncertain = None, False, True
                return f"{err.str()} (commit outcome unknown; checked before resending)"

    def _abort(self, exc: BaseException) -> str:
        """Abort the open transaction; returns a description of why."""
        p = self._producer
        reason = exc.args[0].str() if isinstance(exc, KafkaException) else "delivery failed"
        if isinstance(exc, KafkaException) and exc.args[0].fatal():
            # fenced or otherwise unusable: make a new producer next time
            self._producer, self._ready = None, False
            return f"{reason} (producer fatal, will re-initialise)"
        try:
            p.abort_transaction(self.timeout_s)
        except KafkaException as aexc:
            log.warning("abort_transaction failed: %s", aexc)
            self._producer, self._ready = None, False
        return reason

    # ------------------------------------------------------------------ exactly once

    async def committed_sequence(self) -> int | None:
        """The last sequence committed to Kafka for this stream, or None.

        Reads the stream's latest record in the offsets topic with a
        ``read_committed`` consumer. Call it after :meth:`start` (start fences a
        crashed predecessor and aborts its open transaction, which a
        read_committed reader would otherwise wait behind). Returns None when
        not transactional or when nothing was ever committed. Raises SinkError
        when the broker cannot be reached in ``timeout_s``.
        """
        if not self.transactional:
            return None
        async with self._lock:
            try:
                await self._in_thread(self._ensure_ready_sync)
            except _Transient as exc:
                raise SinkError(str(exc), stream=self.stream_name) from exc
            return await self._in_thread(self._read_committed_sync)

    def _read_committed_sync(self) -> int | None:
        conf = self._common_conf()
        conf.update(
            {
                "group.id": f"heliosdb-cdc-offsets-reader-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        c = Consumer(conf)
        try:
            md = c.list_topics(self.offsets_topic, timeout=self.timeout_s)
            tmd = md.topics.get(self.offsets_topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                return None
            parts = [TopicPartition(self.offsets_topic, p, 0) for p in tmd.partitions]
            c.assign(parts)
            todo = {tp.partition for tp in parts}
            key = self.stream_name.encode()
            found: int | None = None
            deadline = time.monotonic() + self.timeout_s
            while todo and time.monotonic() < deadline:
                for msg in c.consume(500, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            todo.discard(msg.partition())
                            continue
                        raise SinkError(f"reading {self.offsets_topic} failed: {err.str()}")
                    if msg.key() == key:
                        found = int(orjson.loads(msg.value() or b"{}")["sequence"])
            if todo:
                raise SinkError(
                    f"reading {self.offsets_topic} did not finish in {self.timeout_s}s",
                    stream=self.stream_name,
                )
            return found
        finally:
            c.close()


class _Transient(Exception):
    """The broker could not be reached: retry later."""


class _Abort(Exception):
    """Some record of the transaction was not delivered: abort it."""


def kafka_sink_for(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    """The sink registry's factory for ``kafka`` destinations."""
    dest = cfg.destination
    # the transactional id and offsets key name this state directory's stream, so two
    # deployments (or a wiped state directory) never resume from each other's position
    sink_name = f"{cfg.name}-{ctx.instance_id()}"
    return KafkaSink(dest, sink_name, format=cfg.format), f"kafka://{dest.address}/{dest.topic}"
