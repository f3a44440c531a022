"""FORMAT AVRO against a real Confluent-compatible Schema Registry (Apicurio Registry):
registered through it, read back with ``confluent_kafka``'s ``SchemaRegistryClient`` and
``AvroDeserializer``, and a column added later passes the registry's BACKWARD check."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.test_kafka_sink import consume

pytestmark = pytest.mark.kafka


def _http(method: str, url: str, body: Any = None) -> Any:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())


async def test_avro_through_registry_and_backward_evolution(
    kafka_bootstrap: str, schema_registry_url: str, pg_db: PgDatabase, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(10,2))")
    topic = f"avro-sr-{os.getpid()}-{time.monotonic_ns()}"
    # BACKWARD for the subject the stream registers (TopicNameStrategy: <topic>-value)
    subject = f"{topic}-value"
    _http("PUT", f"{schema_registry_url}/config/{subject}", {"compatibility": "BACKWARD"})
    stream = {
        "name": "accounts_avro",
        "tables": ["accounts"],
        "destination": {
            "type": "kafka",
            "address": kafka_bootstrap,
            "topic": topic,
            "options": {
                "schema_registry_url": schema_registry_url,
                "subject_name_strategy": "topic",
                "partitions": 1,
            },
        },
        "format": "avro",
        "operations": ["INSERT"],
    }
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": pg_db.dsn},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}"},
            "streams": [stream],
        }
    )
    async with WebhookServer(cfg) as server:
        runner = server.runners["accounts_avro"]
        pg_db.execute("INSERT INTO accounts VALUES (1, 'ann', 10.50)")
        deadline = time.monotonic() + 60
        while runner.stats.delivered < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pg_db.execute("ALTER TABLE accounts ADD COLUMN note text")
        pg_db.execute("INSERT INTO accounts VALUES (2, 'bob', 7.25, 'new column')")
        while runner.stats.delivered + runner.stats.dead_lettered < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert runner.stats.dead_lettered == 0, runner.stats.last_error
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, 2, 30.0)
    ops = [dict(m.headers() or [])["heliosdb.operation"] for m in msgs]
    assert len(msgs) == 2, ops

    versions = _http("GET", f"{schema_registry_url}/subjects/{subject}/versions")
    assert versions == [1, 2]  # the added column is a new version the BACKWARD check accepted
    latest = _http("GET", f"{schema_registry_url}/subjects/{subject}/versions/2")
    check = _http(
        "POST",
        f"{schema_registry_url}/compatibility/subjects/{subject}/versions/1",
        {"schema": latest["schema"], "schemaType": "AVRO"},
    )
    assert check["is_compatible"] is True

    client = SchemaRegistryClient({"url": schema_registry_url})
    deserialize = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    first, second = (deserialize(m.value(), ctx) for m in msgs)
    assert first["operation"] == "INSERT" and second["operation"] == "INSERT"
    assert first["value"]["owner"] == "ann" and first["value"]["balance"] == Decimal("10.50")
    assert second["value"]["note"] == "new column" and second["value"]["balance"] == Decimal("7.25")
    # Confluent wire format: magic byte 0, then the registry's id of the schema of each record
    ids = [int.from_bytes(m.value()[1:5], "big") for m in msgs]
    assert ids[0] != ids[1]
