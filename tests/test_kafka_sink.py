"""Kafka sink against a real Apache Kafka broker (tests/plugins/kafka.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from heliosdb_cdc._config import Destination
from heliosdb_cdc._errors import SinkError
from heliosdb_cdc.sinks import MemorySink, Outcome, Sink
from heliosdb_cdc.sinks._avro import (
    SCHEMA_HEADER,
    AvroEncoder,
    decode_confluent,
    decode_with_schema,
)
from heliosdb_cdc.sinks._kafka import OFFSETS_TOPIC, KafkaSink
from tests.plugins.kafka import free_port
from tests.sink_contract import (
    Delivered,
    SinkContract,
    assert_order_per_key,
    make_event,
    make_events,
)

# --------------------------------------------------------------------------- memory


class _MemoryHarness:
    def __init__(self) -> None:
        self.sinks: list[MemorySink] = []

    def make_sink(self) -> Sink:
        s = MemorySink()
        self.sinks.append(s)
        return s

    async def read_back(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        return [Delivered(ev.key, ev.body) for s in self.sinks for ev in s.received]


class TestMemorySinkContract(SinkContract):
    """The reference sink keeps the contract too."""

    @pytest.fixture
    def harness(self) -> _MemoryHarness:
        return _MemoryHarness()


# --------------------------------------------------------------------------- helpers


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 30.0,
    isolation: str = "read_committed",
) -> list[Any]:
    """Every message of ``topic`` from the start, until ``count`` arrived or EOF after timeout."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        c.assign(parts)
        out: list[Any] = []
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(m.error())
                out.append(m)
            if len(out) >= count and len(eof) == len(parts):
                break
        return out
    finally:
        c.close()


def _dest(bootstrap: str, topic: str | None = None, **options: Any) -> Destination:
    return Destination(
        type="kafka",
        address=bootstrap,
        topic=topic or f"t-{uuid.uuid4().hex[:12]}",
        options={"timeout_s": 20, **options},
    )


class _KafkaHarness:
    def __init__(self, bootstrap: str, transactional: bool) -> None:
        self.bootstrap = bootstrap
        self.dest = _dest(bootstrap)
        self.stream = f"s-{uuid.uuid4().hex[:12]}"
        self.transactional = transactional

    def make_sink(self) -> Sink:
        return KafkaSink(self.dest, self.stream, transactional=self.transactional)

    async def read_back(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        assert self.dest.topic
        msgs = await asyncio.to_thread(consume, self.bootstrap, self.dest.topic, count, timeout)
        return [Delivered(m.key(), m.value()) for m in msgs]


@pytest.mark.kafka
class TestKafkaSinkContract(SinkContract):
    @pytest.fixture(params=[True, False], ids=["transactional", "idempotent"])
    def harness(self, kafka_bootstrap: str, request: pytest.FixtureRequest) -> _KafkaHarness:
        return _KafkaHarness(kafka_bootstrap, request.param)


# --------------------------------------------------------------------------- behaviour


@pytest.mark.kafka
async def test_key_value_headers_and_partition_per_key(kafka_bootstrap: str) -> None:
    dest = _dest(kafka_bootstrap, partitions=3)
    sink = KafkaSink(dest, "hdr")
    await sink.start()
    batch = make_events(2000, keys=37)
    for ev in batch[:5]:
        ev.headers["x-tenant"] = "acme"
    results: list[Any] = []
    for i in range(0, len(batch), 500):
        results += await sink.send(batch[i : i + 500])
    await sink.close()
    assert all(r.outcome is Outcome.DELIVERED for r in results), results
    assert dest.topic
    msgs = consume(kafka_bootstrap, dest.topic, len(batch))
    assert len(msgs) == len(batch)
    by_id = {ev.event_id: ev for ev in batch}
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for m in msgs:
        h = {k: v.decode() for k, v in m.headers()}
        ev = by_id[h["heliosdb.event_id"]]
        assert m.key() == ev.key
        assert m.value() == ev.body
        assert h["heliosdb.table"] == "orders"
        assert h["heliosdb.operation"] == "UPDATE"
        assert h["heliosdb.sequence"] == str(ev.sequence)
        if ev.sequence <= 5:
            assert h["x-tenant"] == "acme"
        assert m.timestamp()[1] == ev.commit_ts_us // 1000
        partitions[m.key()].add(m.partition())
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) == 3  # keys spread over partitions
    assert_order_per_key([Delivered(m.key(), m.value()) for m in msgs], batch)


_ZOMBIE = textwrap.dedent(
    """
    import asyncio, sys, time, orjson
    from heliosdb_cdc._config import Destination
    from heliosdb_cdc.sinks._kafka import KafkaSink
    from tests.sink_contract import make_events

    dest = Destination.model_validate_json(sys.argv[1])
    sink = KafkaSink(dest, sys.argv[2])

    async def main():
        await sink.start()
        res = await sink.send(make_events(10, start=1))
        assert all(r.ok for r in res), res
        # second batch: produced and flushed to the broker inside a transaction
        # that is never committed -- then this process is killed
        p = sink._producer
        p.begin_transaction()
        for ev in make_events(10, start=11):
            p.produce(dest.topic, key=ev.key, value=ev.body)
        p.produce(sink.offsets_topic, key=sink.stream_name.encode(),
                  value=orjson.dumps({"sequence": 20}))
        assert p.flush(20) == 0
        print("in-transaction", flush=True)
        time.sleep(600)

    asyncio.run(main())
    """
)


@pytest.mark.kafka
async def test_exactly_once_across_a_crash_mid_transaction(kafka_bootstrap: str) -> None:
    dest = _dest(kafka_bootstrap)
    stream = f"eo-{uuid.uuid4().hex[:8]}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", _ZOMBIE, dest.model_dump_json(), stream],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
        assert line.strip() == "in-transaction", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert dest.topic
    # a read_uncommitted reader sees the dead transaction's records...
    dirty = consume(kafka_bootstrap, dest.topic, 20, isolation="read_uncommitted")
    assert len(dirty) == 20

    # restart: same transactional id fences the zombie and aborts its transaction
    sink = KafkaSink(dest, stream)
    await sink.start()
    committed = await sink.committed_sequence()
    assert committed == 10
    # the dispatcher resumes after the committed sequence
    res = await sink.send(make_events(10, start=committed + 1))
    assert all(r.ok for r in res)
    assert await sink.committed_sequence() == 20
    await sink.close()

    msgs = consume(kafka_bootstrap, dest.topic, 20)
    seqs = sorted(orjson.loads(m.value())["sequence"] for m in msgs)
    assert seqs == list(range(1, 21))  # each exactly once
    # a fresh instance reads the same committed position
    again = KafkaSink(dest, stream)
    await again.start()
    assert await again.committed_sequence() == 20
    await again.close()


@pytest.mark.kafka
async def test_committed_sequence_none_for_new_stream_and_non_transactional(
    kafka_bootstrap: str,
) -> None:
    dest = _dest(kafka_bootstrap)
    sink = KafkaSink(dest, f"new-{uuid.uuid4().hex[:8]}")
    await sink.start()
    assert await sink.committed_sequence() is None
    await sink.close()
    plain = KafkaSink(dest, "plain", transactional=False)
    await plain.start()
    assert await plain.committed_sequence() is None
    await plain.close()


@pytest.mark.parametrize("transactional", [True, False])
async def test_unreachable_broker_is_retry_within_bounded_time(transactional: bool) -> None:
    addr = f"127.0.0.1:{free_port()}"
    dest = Destination(type="kafka", address=addr, topic="t", options={"timeout_s": 2})
    sink = KafkaSink(dest, "down", transactional=transactional)
    await sink.start()  # does not raise: the broker may come up later
    # a hang guard, not a speed check: the configured timeout_s must end the attempt
    results = await asyncio.wait_for(sink.send(make_events(3)), 60)
    await sink.close()
    assert [r.outcome for r in results] == [Outcome.RETRY] * 3
    assert addr in (results[0].error or "")


@pytest.mark.kafka
@pytest.mark.parametrize("where", ["client", "broker"])
async def test_oversized_record_fails_alone(kafka_bootstrap: str, where: str) -> None:
    # "client": librdkafka refuses it (message.max.bytes 1,000,000);
    # "broker": the client allows 5 MB, the broker refuses it and the
    # transaction is retried without it.
    extra = {"message.max.bytes": 5_000_000} if where == "broker" else {}
    dest = _dest(kafka_bootstrap, **extra)
    sink = KafkaSink(dest, f"big-{where}")
    await sink.start()
    batch = [make_event(1, 1), make_event(2, 2, size=1_200_000), make_event(3, 3)]
    results = await sink.send(batch)
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.FAILED, Outcome.DELIVERED]
    assert "too large" in (results[1].error or "").lower() or "size" in (results[1].error or "")
    assert await sink.committed_sequence() == 3
    await sink.close()
    assert dest.topic
    msgs = consume(kafka_bootstrap, dest.topic, 2)
    assert sorted(orjson.loads(m.value())["sequence"] for m in msgs) == [1, 3]


@pytest.mark.kafka
async def test_missing_topic_without_auto_create_is_a_clear_error(kafka_bootstrap: str) -> None:
    dest = _dest(kafka_bootstrap, auto_create_topic=False)
    sink = KafkaSink(dest, "nocreate", transactional=False)
    with pytest.raises(SinkError, match=dest.topic or "?"):
        await sink.start()
    await sink.close()


@pytest.mark.kafka
async def test_topic_partitions_and_offsets_topic_are_created(kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    dest = _dest(kafka_bootstrap, partitions=5)
    sink = KafkaSink(dest, "create")
    await sink.start()
    await sink.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    assert dest.topic
    assert len(md.topics[dest.topic].partitions) == 5
    res = ConfigResource("topic", OFFSETS_TOPIC)
    cfg = admin.describe_configs([res])[res].result(timeout=10)
    assert cfg["cleanup.policy"].value == "compact"


# --------------------------------------------------------------------------- Avro on Kafka


@pytest.mark.kafka
async def test_avro_self_describing_round_trip(kafka_bootstrap: str) -> None:
    dest = _dest(kafka_bootstrap)
    sink = KafkaSink(dest, "avro", format="avro")
    sink.set_columns(
        "orders",
        [
            {"name": "id", "type_oid": 23, "key": True},
            {"name": "status", "type_oid": 25, "key": False},
            {"name": "total", "type_oid": 701, "key": False},
        ],
    )
    await sink.start()
    batch = make_events(5)
    res = await sink.send(batch)
    assert all(r.ok for r in res), res
    await sink.close()
    assert dest.topic
    msgs = consume(kafka_bootstrap, dest.topic, 5)
    assert len(msgs) == 5, msgs
    for m in msgs:
        assert m.value()[:2] == b"\xc3\x01"
        h = dict(m.headers())
        rec = decode_with_schema(m.value(), h[SCHEMA_HEADER])
        src = next(e for e in batch if e.event_id == rec["event_id"])
        assert src.event is not None
        assert rec["value"] == src.event["value"]
        assert rec["key"] == src.event["key"]
        assert rec["sequence"] == src.sequence


def _registry_get(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


@pytest.mark.kafka
async def test_avro_confluent_wire_format_round_trip(kafka_bootstrap: str, schema_registry_url: str) -> None:
    """Against a real Confluent-compatible registry (tests/plugins/schema_registry.py)."""
    dest = _dest(kafka_bootstrap, schema_registry_url=schema_registry_url)
    sink = KafkaSink(dest, "confluent", format="avro")
    assert isinstance(sink.avro, AvroEncoder)
    await sink.start()
    batch = make_events(4) + make_events(2, start=5, table="customers")
    res = await sink.send(batch)
    assert all(r.ok for r in res), res
    await sink.close()
    assert dest.topic
    subjects = {
        f"{dest.topic}-heliosdb.cdc.orders_event",
        f"{dest.topic}-heliosdb.cdc.customers_event",
    }
    assert subjects <= set(_registry_get(f"{schema_registry_url}/subjects"))
    msgs = consume(kafka_bootstrap, dest.topic, 6)
    assert len(msgs) == 6
    schemas: dict[int, str] = {}
    for m in msgs:
        assert m.value()[0] == 0
        sid = int.from_bytes(m.value()[1:5], "big")
        if sid not in schemas:
            schemas[sid] = _registry_get(f"{schema_registry_url}/schemas/ids/{sid}")["schema"]
        rec = decode_confluent(m.value(), schemas)
        src = next(e for e in batch if e.event_id == rec["event_id"])
        assert src.event is not None
        assert rec["table"] == src.table
        assert rec["value"]["status"] == src.event["value"]["status"]
        assert SCHEMA_HEADER not in dict(m.headers() or [])
    assert len(schemas) == 2  # one per table


class _LostCommitAnswer:
    """A producer whose first commit succeeds on the broker but reports an error."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit_transaction(self, *args: Any) -> None:
        self.inner.commit_transaction(*args)
        if not self.lost:
            self.lost = True
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: answer lost"))


@pytest.mark.kafka
async def test_commit_with_unknown_outcome_is_not_resent(kafka_bootstrap: str) -> None:
    dest = _dest(kafka_bootstrap)
    sink = KafkaSink(dest, f"lost-{uuid.uuid4().hex[:8]}")
    await sink.start()
    sink._producer = proxy = _LostCommitAnswer(sink._producer)
    batch = make_events(5)
    first = await sink.send(batch)
    assert proxy.lost
    assert [r.outcome for r in first] == [Outcome.RETRY] * 5
    assert "outcome unknown" in (first[0].error or "")
    # the dispatcher retries the same events: they were committed, so not resent
    second = await sink.send(batch)
    assert all(r.ok for r in second), second
    more = make_events(3, start=6)
    res = await sink.send(more)
    assert all(r.ok for r in res), res
    assert await sink.committed_sequence() == 8
    await sink.close()
    assert dest.topic
    msgs = consume(kafka_bootstrap, dest.topic, 8)
    assert sorted(orjson.loads(m.value())["sequence"] for m in msgs) == list(range(1, 9))
