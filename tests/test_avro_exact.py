"""FORMAT AVRO carries values exactly: json/jsonb as the JSON text PostgreSQL wrote
(duplicate keys and spacing of ``json`` kept), numbers with every digit."""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._event import JsonText, dumps
from heliosdb_cdc.sinks import OutboundEvent
from heliosdb_cdc.sinks._avro import SCHEMA_HEADER, AvroEncoder, decode_with_schema
from tests.plugins.postgres import PgDatabase

JSON_TEXT = '{"a": 1, "a": 2.000000000000000000000000000001, "b": [1e2, "\\u00e9"]}'
BIG = "3.14159265358979323846264338327950288419716939937510"
WIDE = "12345678901234567890.1234567890"
COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type_oid": 20, "key": True},
    {"name": "j", "type_oid": 114, "key": False},
    {"name": "jb", "type_oid": 3802, "key": False},
    {"name": "n", "type_oid": 1700, "key": False},
    {"name": "p", "type_oid": 1700, "key": False, "typmod": ((30 << 16) | 10) + 4},
    {"name": "tiny", "type_oid": 1700, "key": False},
    {"name": "f8", "type_oid": 701, "key": False},
]


async def test_avro_on_kafka_keeps_json_text_and_every_digit(
    kafka_bootstrap: str, pg_db: PgDatabase, tmp_path: Path
) -> None:
    from tests.test_kafka_sink import consume

    pg_db.execute(
        "CREATE TABLE docs (id bigint PRIMARY KEY, j json, jb jsonb, n numeric, "
        "p numeric(30,10), tiny numeric, f8 float8)"
    )
    topic = f"avro-exact-{os.getpid()}-{time.monotonic_ns()}"
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": pg_db.dsn},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}"},
            "streams": [
                {
                    "name": "docs_avro",
                    "tables": ["docs"],
                    "destination": {
                        "type": "kafka",
                        "address": kafka_bootstrap,
                        "topic": topic,
                        "options": {"partitions": 1},
                    },
                    "format": "avro",
                }
            ],
        }
    )
    async with WebhookServer(cfg) as server:
        pg_db.execute(
            "INSERT INTO docs VALUES (9007199254740993, %s, %s, %s, %s, 0.00000099, 0.1)",
            (JSON_TEXT, JSON_TEXT, BIG, WIDE),
        )
        deadline = time.monotonic() + 60
        while server.runners["docs_avro"].stats.delivered < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, 1, 30.0)
    assert len(msgs) == 1
    rec = decode_with_schema(msgs[0].value(), dict(msgs[0].headers())[SCHEMA_HEADER])
    value = rec["value"]
    jsonb_text = pg_db.execute("SELECT %s::jsonb::text", (JSON_TEXT,))[0][0]
    assert value["j"] == JSON_TEXT  # json: exactly as written, both "a" keys
    assert value["jb"] == jsonb_text  # jsonb: PostgreSQL's text of it, every digit
    assert value["f8"] == 0.1
    assert value["id"] == 9007199254740993


def _event(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": "evt_00000000016b3748_000000",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": 1,
        "operation": "INSERT",
        "database": "db",
        "table": "docs",
        "key": {"id": 1},
        "value": value,
        "old_value": None,
        "transaction_id": "txn_1",
    }


async def test_typed_columns_keep_every_digit() -> None:
    # the stored event as capture writes it (_event.dumps: json text verbatim, numbers
    # positional with every digit), encoded with the columns' types
    enc = AvroEncoder()
    enc.set_columns("docs", COLUMNS)
    value = {
        "id": 9007199254740993,
        "j": JsonText(JSON_TEXT),
        "n": Decimal(BIG),
        "p": Decimal(WIDE),
        "tiny": Decimal("9.9E-7"),
        "f8": 0.1,
    }
    event = _event(value)
    ev = OutboundEvent(event["event_id"], 1, "docs", "INSERT", b'{"id":1}', dumps(event), "")
    data, headers = await enc.encode(ev)
    rec = decode_with_schema(data, headers[SCHEMA_HEADER])["value"]
    assert rec["j"] == JSON_TEXT  # both "a" keys, the spacing, the exponent, the escape
    assert rec["n"] == BIG  # unconstrained numeric: a string with every digit
    assert rec["p"] == Decimal(WIDE)  # numeric(30,10): an Avro decimal
    assert rec["tiny"] == "0.00000099"  # positional, as PostgreSQL writes it
    assert rec["f8"] == 0.1 and rec["id"] == 9007199254740993


async def test_decoded_event_keeps_numbers_in_json_as_numbers() -> None:
    # a stream with a filter hands the encoder the decoded event (fractions as Decimals)
    enc = AvroEncoder()
    enc.set_columns("docs", COLUMNS)
    event = _event({"id": 1, "jb": {"x": Decimal("1.50")}, "n": Decimal("9.9E-7")})
    ev = OutboundEvent(event["event_id"], 1, "docs", "INSERT", b'{"id":1}', b"[]", "", event=event)
    data, headers = await enc.encode(ev)
    rec = decode_with_schema(data, headers[SCHEMA_HEADER])
    assert rec["value"]["jb"] == '{"x":1.50}'  # a number, not the string "1.50"
    assert rec["value"]["n"] == "0.00000099"
    assert orjson.loads(rec["value"]["jb"]) == {"x": 1.5}
