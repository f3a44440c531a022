"""PostgreSQL -> heliosdb-cdc -> a real Kafka broker and a moto Kinesis server,
JSON and Avro, every change in per-key order."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_cdc import Destination, StreamConfig, WebhookServer
from heliosdb_cdc.sinks import decode_single_object, decode_with_schema
from tests.plugins.postgres import PgDatabase
from tests.test_e2e_webhook import make_config
from tests.test_kafka_sink import consume
from tests.test_kinesis_sink import REGION, create_stream, read_stream

CHANGES = 2000


def workload(db: PgDatabase) -> int:
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, customer_id int, total numeric(12,2), "
        "status text, created_at timestamptz DEFAULT now())"
    )
    rnd = random.Random(5)
    conn = db.connect()
    n = 0
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO orders (id, customer_id, total, status) "
            "SELECT g, g % 50, g * 1.25, 'new' FROM generate_series(1, 500) g"
        )
        n += 500
        while n < CHANGES:
            cur.execute(
                "UPDATE orders SET total = total + 1, status = %s WHERE id = %s",
                (rnd.choice(["paid", "shipped"]), rnd.randint(1, 500)),
            )
            n += cur.rowcount
    conn.close()
    return n


def check_order(events: list[dict[str, Any]], written: int) -> None:
    assert len({e["event_id"] for e in events}) == written
    by_key: dict[int, list[int]] = {}
    for e in events:
        by_key.setdefault(e["key"]["id"], []).append(e["sequence"])
    for seqs in by_key.values():
        assert seqs == sorted(seqs)


async def run(db: PgDatabase, tmp_path: Path, cfg_stream: StreamConfig) -> int:
    cfg = make_config(db, tmp_path)
    db.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric(12,2), status text, created_at timestamptz DEFAULT now())"
    )
    async with WebhookServer(cfg) as server:
        await server.create_stream(cfg_stream)
        written = await asyncio.to_thread(workload, db)
        runner = server.runners[cfg_stream.name]
        for _ in range(600):
            if runner.stats.delivered >= written:
                break
            await asyncio.sleep(0.1)
        assert runner.stats.delivered == written, server.stream_status(cfg_stream.name)
    return written


@pytest.mark.parametrize("fmt", ["json", "avro"])
async def test_kafka_every_change_in_key_order(
    pg_db: PgDatabase, tmp_path: Path, kafka_bootstrap: str, fmt: str
) -> None:
    topic = f"orders-events-{fmt}-{pg_db.name}"
    stream = StreamConfig(
        name="orders_stream",
        tables=["orders"],
        destination=Destination(type="kafka", address=kafka_bootstrap, topic=topic),
        format=fmt,  # type: ignore[arg-type]
    )
    written = await run(pg_db, tmp_path, stream)
    msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, written)
    if fmt == "json":
        events = [orjson.loads(m.value()) for m in msgs]
    else:
        from heliosdb_cdc.sinks._avro import SCHEMA_HEADER

        events = []
        for m in msgs:
            headers = dict(m.headers() or [])
            events.append(decode_with_schema(m.value(), headers[SCHEMA_HEADER]))
    # one row's changes share a partition: order within each partition
    by_part: dict[int, list[dict[str, Any]]] = {}
    for m, e in zip(msgs, events, strict=True):
        by_part.setdefault(m.partition(), []).append(e)
    check_order([e for part in by_part.values() for e in part], written)
    sample = next(e for e in events if e["operation"] == "INSERT")
    assert str(sample["value"]["total"]) in {
        str(sample["key"]["id"] * 1.25),
        f"{sample['key']['id'] * 1.25:.2f}",
    }


@pytest.mark.parametrize("fmt", ["json", "avro"])
async def test_kinesis_every_change_in_key_order(
    pg_db: PgDatabase,
    tmp_path: Path,
    kinesis_endpoint: str,
    fmt: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = await asyncio.to_thread(create_stream, kinesis_endpoint)
    schema_dir = tmp_path / "schemas"
    stream = StreamConfig(
        name="tx_stream",
        tables=["orders"],
        destination=Destination(
            type="kinesis",
            address=name,
            region=REGION,
            options={"endpoint_url": kinesis_endpoint, "schema_dir": str(schema_dir)},
        ),
        format=fmt,  # type: ignore[arg-type]
    )
    written = await run(pg_db, tmp_path, stream)
    records = await asyncio.to_thread(read_stream, kinesis_endpoint, name)
    if fmt == "json":
        events = [orjson.loads(data) for _, data in records]
    else:
        from heliosdb_cdc.sinks._avro import fingerprint

        schemas = {}
        for p in schema_dir.glob("*.avsc"):
            sch = orjson.loads(p.read_bytes())
            schemas[fingerprint(sch)] = sch
        events = [decode_single_object(data, schemas) for _, data in records]
    check_order(events, written)


async def test_unreachable_broker_does_not_block_create(pg_db: PgDatabase, tmp_path: Path) -> None:
    from heliosdb_cdc._embedded import free_port

    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.create_stream(
            StreamConfig(
                name="k",
                tables=["orders"],
                destination=Destination(
                    type="kafka", address=f"127.0.0.1:{free_port()}", topic="t", options={"timeout_s": 3}
                ),
            )
        )
        # CREATE returned while the destination is still being reached (it answers only
        # after its 3 s timeout): the broker's state never blocks the statement
        assert server.stream_status("k")["last_error"] is None
        pg_db.execute("INSERT INTO orders VALUES (1)")
        for _ in range(300):
            if server.stream_status("k")["last_error"]:
                break
            await asyncio.sleep(0.1)
        status = server.stream_status("k")
        assert status["state"] == "running"
        assert status["events_delivered"] == 0
        assert "127.0.0.1" in (status["last_error"] or "")
        await server.drop_stream("k")
        assert server.store is not None and server.store.list_streams() == []
