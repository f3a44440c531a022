"""The guide's SQL examples, run as written through `heliosdb-cdc sql` against a
running service, a real Kafka broker and a moto Kinesis server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from heliosdb_cdc import WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.test_e2e_webhook import make_config
from tests.test_kafka_sink import consume
from tests.test_kinesis_sink import create_stream, read_stream
from tests.test_stream_management import cli_sql


async def test_guide_kafka_quick_start_and_management(
    pg_db: PgDatabase, tmp_path: Path, kafka_bootstrap: str
) -> None:
    pg_db.execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, total numeric(12,2));"
        "CREATE TABLE users (id serial PRIMARY KEY, name text)"
    )
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{free_port()}"})
    topic = f"orders-events-{pg_db.name}"
    async with WebhookServer(cfg) as server:
        url = "http://" + server.config.webhook.bind_address
        quick_start = (
            "-- Create a simple CDC stream\n"
            f"CREATE CHANGE DATA CAPTURE ON orders\nTO KAFKA '{kafka_bootstrap}' TOPIC '{topic}'\nFORMAT JSON;\n"
            "-- Verify the stream\nSHOW CDC STREAMS;"
        )
        res = await cli_sql(url, quick_start)
        assert res.returncode == 0, res.stderr
        assert "orders_kafka" in res.stdout
        res = await cli_sql(
            url,
            f"CREATE CHANGE DATA CAPTURE ON users\nTO KAFKA '{kafka_bootstrap}' TOPIC 'user-events-{pg_db.name}'\n"
            "FORMAT JSON\nAS 'users_stream';",
        )
        assert res.returncode == 0, res.stderr
        pg_db.execute("INSERT INTO orders (total) SELECT g FROM generate_series(1, 100) g")
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, 100)
        assert sorted(orjson.loads(m.value())["key"]["id"] for m in msgs) == list(range(1, 101))
        for stmt in (
            "-- List all streams\nSHOW CDC STREAMS;",
            "-- View stream details\nSHOW CDC STREAM STATUS users_stream;",
            "-- Pause a stream\nALTER CDC STREAM users_stream PAUSE;",
            "-- Resume a stream\nALTER CDC STREAM users_stream RESUME;",
            "-- Drop a stream\nDROP CHANGE DATA CAPTURE users_stream;",
        ):
            res = await cli_sql(url, stmt)
            assert res.returncode == 0, (stmt, res.stderr)
        res = await cli_sql(url, "SHOW CDC STREAMS;")
        assert "users_stream" not in res.stdout and "orders_kafka" in res.stdout


async def test_guide_kinesis_avro_example(
    pg_db: PgDatabase, tmp_path: Path, kinesis_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the standard AWS configuration chain: credentials and endpoint from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", kinesis_endpoint)
    name = await asyncio.to_thread(create_stream, kinesis_endpoint)
    pg_db.execute("CREATE TABLE transactions (id serial PRIMARY KEY, amount numeric(12,2), memo text)")
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{free_port()}"})
    async with WebhookServer(cfg) as server:
        url = "http://" + server.config.webhook.bind_address
        res = await cli_sql(
            url,
            f"CREATE CHANGE DATA CAPTURE ON transactions\nTO KINESIS '{name}' REGION 'us-east-1'\nFORMAT AVRO;",
        )
        assert res.returncode == 0, res.stderr
        pg_db.execute("INSERT INTO transactions (amount, memo) SELECT g, 'm' FROM generate_series(1, 50) g")
        runner = server.runners["transactions_kinesis"]
        for _ in range(300):
            if runner.stats.delivered >= 50:
                break
            await asyncio.sleep(0.1)
        assert runner.stats.delivered == 50, server.stream_status("transactions_kinesis")
    records = await asyncio.to_thread(read_stream, kinesis_endpoint, name)
    assert len(records) == 50
    # Avro single-object encoding: magic bytes then the schema fingerprint
    assert all(data[:2] == b"\xc3\x01" for _, data in records)
