"""Kinesis sink against a moto server (tests/plugins/kinesis.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from heliosdb_cdc._config import Destination
from heliosdb_cdc._errors import SinkError
from heliosdb_cdc.sinks import Outcome, Sink
from heliosdb_cdc.sinks._avro import decode_single_object
from heliosdb_cdc.sinks._kinesis import (
    MAX_BYTES_PER_CALL,
    MAX_RECORD_BYTES,
    KinesisSink,
    _Entry,
    partition_key,
    plan_calls,
)
from tests.plugins.kafka import free_port
from tests.sink_contract import (
    Delivered,
    SinkContract,
    assert_order_per_key,
    make_event,
    make_events,
)

REGION = "us-east-1"

# --------------------------------------------------------------------------- planning (no server)


def _entries(pks: list[str], size: int = 10) -> list[_Entry]:
    return [_Entry(i, pk, b"x" * size) for i, pk in enumerate(pks)]


def test_plan_respects_record_count_limit() -> None:
    calls = plan_calls(_entries([f"k{i}" for i in range(1201)]))
    assert [len(c) for c in calls] == [500, 500, 201]


def test_plan_respects_byte_limit() -> None:
    calls = plan_calls(_entries([f"k{i}" for i in range(12)], size=1_000_000))
    assert all(sum(e.size for e in c) <= MAX_BYTES_PER_CALL for c in calls)
    assert [len(c) for c in calls] == [5, 5, 2]


def test_plan_puts_one_record_per_key_per_call_and_keeps_key_order() -> None:
    pks = ["a", "b", "a", "c", "a", "b", "d"]
    calls = plan_calls(_entries(pks))
    for c in calls:
        assert len({e.pk for e in c}) == len(c)
    # order per key follows call order
    where = {e.index: n for n, c in enumerate(calls) for e in c}
    for pk in set(pks):
        idx = [i for i, p in enumerate(pks) if p == pk]
        assert [where[i] for i in idx] == sorted(where[i] for i in idx)
        assert len({where[i] for i in idx}) == len(idx)
    assert [sorted(e.index for e in c) for c in calls] == [[0, 1, 3, 6], [2, 5], [4]]


def test_partition_key_is_table_and_key_hashed_when_long() -> None:
    assert partition_key("orders", b'{"id":1}') == 'orders:{"id":1}'
    long_key = orjson.dumps({"id": "x" * 400})
    pk = partition_key("orders", long_key)
    assert len(pk) <= 256
    assert pk.startswith("orders:sha256:")
    assert pk == partition_key("orders", long_key)  # stable
    assert pk != partition_key("orders", orjson.dumps({"id": "y" * 400}))


# --------------------------------------------------------------------------- moto helpers


def _boto(endpoint: str) -> Any:
    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)


def create_stream(endpoint: str, shards: int = 2) -> str:
    name = f"s-{uuid.uuid4().hex[:10]}"
    client = _boto(endpoint)
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    return name


def read_stream(endpoint: str, name: str) -> list[tuple[str, bytes]]:
    """Every record of every shard, in shard order: [(partition key, data)]."""
    client = _boto(endpoint)
    out: list[tuple[str, bytes]] = []
    for shard in client.list_shards(StreamName=name)["Shards"]:
        it = client.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10000)
            out.extend((r["PartitionKey"], r["Data"]) for r in resp["Records"])
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
    return out


def _delivered(records: list[tuple[str, bytes]]) -> list[Delivered]:
    out = []
    for pk, data in records:
        ev = orjson.loads(data)
        key = orjson.dumps(ev["key"], option=orjson.OPT_SORT_KEYS)
        assert pk == partition_key(ev["table"], key)
        out.append(Delivered(key, data))
    return out


def _dest(endpoint: str, stream: str, **options: Any) -> Destination:
    return Destination(
        type="kinesis",
        address=stream,
        region=REGION,
        options={"endpoint_url": endpoint, "timeout_s": 20, **options},
    )


class _KinesisHarness:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.stream = create_stream(endpoint)

    def make_sink(self) -> Sink:
        return KinesisSink(_dest(self.endpoint, self.stream))

    async def read_back(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while True:
            recs = await asyncio.to_thread(read_stream, self.endpoint, self.stream)
            if len(recs) >= count or time.monotonic() > deadline:
                return _delivered(recs)
            await asyncio.sleep(0.2)


@pytest.mark.kinesis
class TestKinesisSinkContract(SinkContract):
    @pytest.fixture
    def harness(self, kinesis_endpoint: str) -> _KinesisHarness:
        return _KinesisHarness(kinesis_endpoint)


class Recorder:
    """Wraps the aiobotocore client: records PutRecords calls, can fail entries."""

    def __init__(self, inner: Any, fail: Callable[[str, int], str | None] | None = None) -> None:
        self.inner = inner
        self.fail = fail
        self.calls: list[list[str]] = []
        self.tries: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_records(self, **kw: Any) -> dict[str, Any]:
        records = kw["Records"]
        self.calls.append([r["PartitionKey"] for r in records])
        keep, plan = [], []
        for r in records:
            data = r["Data"]
            self.tries[data] += 1
            code = self.fail(r["PartitionKey"], self.tries[data]) if self.fail else None
            plan.append(code)
            if code is None:
                keep.append(r)
        real = iter([])
        if keep:
            resp = await self.inner.put_records(**{**kw, "Records": keep})
            real = iter(resp["Records"])
        out = [
            next(real) if code is None else {"ErrorCode": code, "ErrorMessage": "injected"} for code in plan
        ]
        return {"FailedRecordCount": sum(1 for c in plan if c), "Records": out}


# --------------------------------------------------------------------------- behaviour


@pytest.mark.kinesis
async def test_batches_split_into_calls_within_limits(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint, shards=4)
    rec: list[Recorder] = []

    def wrap(c: Any) -> Recorder:
        rec.append(Recorder(c))
        return rec[-1]

    sink = KinesisSink(_dest(kinesis_endpoint, stream), client_wrapper=wrap)
    await sink.start()
    batch = make_events(1300, keys=700)
    results = await sink.send(batch)
    await sink.close()
    assert all(r.ok for r in results)
    calls = rec[0].calls
    assert all(len(c) <= 500 for c in calls)
    assert all(len(set(c)) == len(c) for c in calls)  # one record per key per call
    assert sum(len(c) for c in calls) == 1300
    assert len(calls) == 3
    got = await asyncio.to_thread(read_stream, kinesis_endpoint, stream)
    assert_order_per_key(_delivered(got), batch)


@pytest.mark.kinesis
async def test_record_over_one_mib_fails_with_reason(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint)
    sink = KinesisSink(_dest(kinesis_endpoint, stream))
    await sink.start()
    batch = [make_event(1, 1), make_event(2, 2, size=MAX_RECORD_BYTES), make_event(3, 3)]
    results = await sink.send(batch)
    await sink.close()
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.FAILED, Outcome.DELIVERED]
    assert "exceeds the Kinesis limit" in (results[1].error or "")
    got = await asyncio.to_thread(read_stream, kinesis_endpoint, stream)
    assert sorted(orjson.loads(d)["sequence"] for _, d in got) == [1, 3]


@pytest.mark.kinesis
async def test_missing_stream_is_a_clear_error(kinesis_endpoint: str) -> None:
    sink = KinesisSink(_dest(kinesis_endpoint, "no-such-stream"))
    with pytest.raises(SinkError, match="'no-such-stream' not found in region us-east-1"):
        await sink.start()
    with pytest.raises(SinkError, match="no-such-stream"):
        await sink.send(make_events(2))
    await sink.close()


@pytest.mark.kinesis
async def test_partial_failures_retry_only_failed_entries(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint)
    rec: list[Recorder] = []

    def fail(pk: str, attempt: int) -> str | None:
        # a third of the keys throttled on their first two tries
        return (
            "ProvisionedThroughputExceededException"
            if zlib.crc32(pk.encode()) % 3 == 0 and attempt <= 2
            else None
        )

    def wrap(c: Any) -> Recorder:
        rec.append(Recorder(c, fail))
        return rec[-1]

    sink = KinesisSink(_dest(kinesis_endpoint, stream), client_wrapper=wrap)
    await sink.start()
    batch = make_events(60, keys=12)
    results = await sink.send(batch)
    await sink.close()
    assert all(r.ok for r in results), results
    assert any(n > 1 for n in rec[0].tries.values())  # some were retried
    got = await asyncio.to_thread(read_stream, kinesis_endpoint, stream)
    assert len(got) == 60  # nothing written twice
    assert_order_per_key(_delivered(got), batch)


@pytest.mark.kinesis
async def test_persistent_throttling_blocks_only_that_key(kinesis_endpoint: str) -> None:
    stream = create_stream(kinesis_endpoint)
    hot = partition_key("orders", orjson.dumps({"id": 1}))
    throttled = {"on": True}

    def fail(pk: str, attempt: int) -> str | None:
        if throttled["on"] and pk == hot:
            return "ProvisionedThroughputExceededException"
        return None

    sink = KinesisSink(
        _dest(kinesis_endpoint, stream, max_attempts=3),
        client_wrapper=lambda c: Recorder(c, fail),
    )
    await sink.start()
    batch = make_events(20, keys=4)  # key 1: sequences 1, 5, 9, 13, 17
    results = await sink.send(batch)
    by_seq = {ev.sequence: r for ev, r in zip(batch, results, strict=True)}
    for seq, r in by_seq.items():
        if seq % 4 == 1:
            assert r.outcome is Outcome.RETRY, (seq, r)
            assert r.error and "ProvisionedThroughputExceeded" in r.error
        else:
            assert r.ok, (seq, r)
    # the dispatcher retries the RETRY events later, in order: nothing lost or reordered
    throttled["on"] = False
    again = [ev for ev in batch if ev.sequence % 4 == 1]
    assert all(r.ok for r in await sink.send(again))
    await sink.close()
    got = await asyncio.to_thread(read_stream, kinesis_endpoint, stream)
    assert_order_per_key(_delivered(got), batch)


async def test_unreachable_endpoint_is_retry_within_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{free_port()}"
    dest = _dest(endpoint, "s", timeout_s=3, max_attempts=2)
    sink = KinesisSink(dest)
    await sink.start()
    # a hang guard, not a speed check: the configured timeout must end the attempt
    results = await asyncio.wait_for(sink.send(make_events(3)), 60)
    await sink.close()
    assert [r.outcome for r in results] == [Outcome.RETRY] * 3
    assert "127.0.0.1" in (results[0].error or "") or "connect" in (results[0].error or "").lower()


@pytest.mark.kinesis
async def test_avro_single_object_round_trip(kinesis_endpoint: str, tmp_path: Path) -> None:
    stream = create_stream(kinesis_endpoint)
    sink = KinesisSink(_dest(kinesis_endpoint, stream, schema_dir=str(tmp_path)), format="avro")
    sink.set_columns(
        "orders",
        [
            {"name": "id", "type_oid": 20, "key": True},
            {"name": "status", "type_oid": 1043, "key": False},
            {"name": "total", "type_oid": 1700, "key": False, "typmod": ((12 << 16) | 2) + 4},
        ],
    )
    await sink.start()
    batch = make_events(6, keys=3)
    assert all(r.ok for r in await sink.send(batch))
    await sink.close()
    schemas = {int(p.stem, 16): p.read_text() for p in tmp_path.glob("*.avsc")}
    assert len(schemas) == 1
    got = await asyncio.to_thread(read_stream, kinesis_endpoint, stream)
    assert len(got) == 6
    for _pk, data in got:
        assert data[:2] == b"\xc3\x01"
        rec = decode_single_object(data, schemas)
        src = next(e for e in batch if e.event_id == rec["event_id"])
        assert src.event is not None
        assert rec["key"] == src.event["key"]
        assert rec["value"]["status"] == src.event["value"]["status"]
        assert str(rec["value"]["total"]) == f"{src.event['value']['total']:.2f}"
