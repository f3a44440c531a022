"""FORMAT AVRO: schema derivation from PostgreSQL types, versions, and every encoding."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from io import BytesIO
from typing import Any

import fastavro
import orjson
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint

from heliosdb_cdc.sinks._avro import (
    SCHEMA_HEADER,
    AvroEncoder,
    AvroSchemaRegistry,
    avro_schema_for,
    canonical_form,
    crc64_avro,
    decode_confluent,
    decode_single_object,
    decode_with_schema,
    fingerprint,
    numeric_precision_scale,
)
from heliosdb_cdc.sinks._base import OutboundEvent


def typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type_oid": 20, "key": True},
    {"name": "small", "type_oid": 21, "key": False},
    {"name": "n4", "type_oid": 23, "key": False},
    {"name": "f4", "type_oid": 700, "key": False},
    {"name": "f8", "type_oid": 701, "key": False},
    {"name": "price", "type_oid": 1700, "key": False, "typmod": typmod(10, 2)},
    {"name": "ratio", "type_oid": 1700, "key": False},
    {"name": "ok", "type_oid": 16, "key": False},
    {"name": "name", "type_oid": 25, "key": False},
    {"name": "code", "type_oid": 1043, "key": False},
    {"name": "uid", "type_oid": 2950, "key": False},
    {"name": "mood", "type_oid": 16390, "key": False},  # a user enum
    {"name": "at", "type_oid": 1184, "key": False},
    {"name": "local", "type_oid": 1114, "key": False},
    {"name": "day", "type_oid": 1082, "key": False},
    {"name": "doc", "type_oid": 3802, "key": False},
    {"name": "tags", "type_oid": 1009, "key": False},
    {"name": "blob", "type_oid": 17, "key": False},
    {"name": "2nd col", "type_oid": 25, "key": False},
]

VALUE = {
    "id": 123,
    "small": 7,
    "n4": -5,
    "f4": 1.5,
    "f8": "NaN",
    "price": Decimal("99.99"),
    "ratio": "3.14159265358979323846264338327950288",
    "ok": True,
    "name": "Ada",
    "code": "X1",
    "uid": "8f1c2d7e-0000-4000-8000-000000000001",
    "mood": "happy",
    "at": "2026-01-04T12:00:00Z",
    "local": "2026-01-04T12:00:00.123",
    "day": "2026-01-04",
    "doc": {"a": [1, 2, {"b": None}]},
    "tags": ["x", "y"],
    "blob": "AAEC",
    "2nd col": "second",
}


def event(value: dict[str, Any] | None = None, old: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "event_id": "evt_abc123",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": 12345,
        "operation": "UPDATE",
        "database": "production",
        "table": "orders",
        "key": {"id": 123},
        "value": VALUE if value is None else value,
        "old_value": old,
        "transaction_id": "txn_xyz789",
    }


def _field_types(schema: dict[str, Any], record: str = "value") -> dict[str, Any]:
    rec = next(f for f in schema["fields"] if f["name"] == record)["type"][1]
    return {f["name"]: f["type"] for f in rec["fields"]}


def test_type_mapping() -> None:
    schema = avro_schema_for("orders", COLUMNS)
    t = _field_types(schema)
    assert t["id"] == ["null", "long"]
    assert t["small"] == ["null", "int"] and t["n4"] == ["null", "int"]
    assert t["f4"] == ["null", "float"] and t["f8"] == ["null", "double"]
    dec = t["price"][1]
    assert dec == {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
    assert t["price"][2] == "string"  # NaN / infinities
    assert t["ratio"] == ["null", "string"]  # unconstrained numeric
    assert t["ok"] == ["null", "boolean"]
    for name in ("name", "code", "uid", "mood", "doc", "tags", "_2nd_col"):
        assert t[name] == ["null", "string"], name
    assert t["at"][1] == {"type": "long", "logicalType": "timestamp-micros"}
    assert t["local"][1] == {"type": "long", "logicalType": "timestamp-micros"}
    assert t["day"][1] == {"type": "int", "logicalType": "date"}
    assert t["blob"] == ["null", "bytes"]
    # every column nullable with a null default; key record has the key columns only
    rec = next(f for f in schema["fields"] if f["name"] == "value")["type"][1]
    assert all(f["type"][0] == "null" and f["default"] is None for f in rec["fields"])
    assert list(_field_types(schema, "key")) == ["id"]
    assert [f["name"] for f in schema["fields"]] == [
        "event_id",
        "timestamp",
        "sequence",
        "operation",
        "database",
        "table",
        "key",
        "value",
        "old_value",
        "transaction_id",
    ]
    fastavro.parse_schema(schema)  # valid Avro


def test_numeric_typmod() -> None:
    assert numeric_precision_scale(typmod(10, 2)) == (10, 2)
    assert numeric_precision_scale(-1) is None
    assert numeric_precision_scale(None) is None


def test_crc64_matches_spec_and_fastavro() -> None:
    schema = avro_schema_for("orders", COLUMNS)
    canon = canonical_form(schema)
    fp = crc64_avro(canon.encode())
    assert fp == fingerprint(schema)
    # fastavro gives the little-endian bytes as hex: the single-object header's bytes
    assert fp.to_bytes(8, "little").hex() == fastavro_fingerprint(canon, "CRC-64-AVRO")


def test_single_object_round_trip_every_type() -> None:
    reg = AvroSchemaRegistry()
    s = reg.schema_for("orders", COLUMNS)
    old = dict(VALUE, price="NaN", at="infinity", day="-infinity", f8=2.5)
    data = s.encode_single_object(event(old=old))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == s.fingerprint_bytes
    # plain fastavro, as a consumer would do it, given the schema
    rec = fastavro.schemaless_reader(BytesIO(data[10:]), fastavro.parse_schema(s.schema), None)
    # (repr: NaN != NaN)
    assert repr(rec) == repr(decode_single_object(data, reg)) == repr(decode_with_schema(data, s.json))
    assert rec["event_id"] == "evt_abc123"
    assert rec["timestamp"] == datetime(2026, 1, 4, 12, tzinfo=UTC)
    assert rec["key"] == {"id": 123}
    v = rec["value"]
    assert v["id"] == 123 and v["small"] == 7 and v["n4"] == -5
    assert v["f4"] == 1.5 and v["f8"] != v["f8"]  # NaN
    assert v["price"] == Decimal("99.99")
    assert v["ratio"] == VALUE["ratio"]
    assert v["ok"] is True and v["name"] == "Ada" and v["mood"] == "happy"
    assert v["at"] == datetime(2026, 1, 4, 12, tzinfo=UTC)
    assert v["local"] == datetime(2026, 1, 4, 12, 0, 0, 123000, tzinfo=UTC)
    assert v["day"] == date(2026, 1, 4)
    assert orjson.loads(v["doc"]) == VALUE["doc"]
    assert orjson.loads(v["tags"]) == ["x", "y"]
    assert v["blob"] == b"\x00\x01\x02"
    assert v["_2nd_col"] == "second"
    o = rec["old_value"]
    assert o["price"] == "NaN" and o["at"] == "infinity" and o["day"] == "-infinity"


def test_nulls_missing_columns_and_delete() -> None:
    s = AvroSchemaRegistry().schema_for("orders", COLUMNS)
    ev = event(old={"id": 123, "name": None})  # delete; unchanged TOAST absent
    ev["value"] = None
    ev["operation"] = "DELETE"
    rec = decode_with_schema(s.encode_single_object(ev), s.json)
    assert rec["value"] is None
    assert rec["old_value"]["id"] == 123
    assert all(v is None for k, v in rec["old_value"].items() if k != "id")


def test_confluent_wire_format() -> None:
    s = AvroSchemaRegistry().schema_for("orders", COLUMNS)
    data = s.encode_confluent(42, event())
    assert data[0] == 0 and struct.unpack(">I", data[1:5]) == (42,)
    rec = decode_confluent(data, {42: s.json})
    assert rec["value"]["name"] == "Ada"


def test_schema_versions_follow_the_fingerprint() -> None:
    reg = AvroSchemaRegistry()
    v1 = reg.schema_for("orders", COLUMNS)
    assert reg.schema_for("orders", [dict(c) for c in COLUMNS]) is v1  # same columns
    added = [*COLUMNS, {"name": "note", "type_oid": 25, "key": False}]
    v2 = reg.schema_for("orders", added)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.fingerprint != v2.fingerprint
    retyped = [dict(c, type_oid=20) if c["name"] == "n4" else c for c in COLUMNS]
    v3 = reg.schema_for("orders", retyped)
    assert v3.version == 3
    assert reg.schema_for("orders", COLUMNS) is v1  # back to a known shape: same version
    assert reg.schema_for("customers", COLUMNS).version == 1  # versions are per table
    # old data still decodes after the schema changed
    data = v1.encode_single_object(event())
    assert decode_single_object(data, reg)["value"]["n4"] == -5
    assert [s.version for s in reg.versions("orders")] == [1, 2, 3]


def test_qualified_table_names_and_odd_columns() -> None:
    s = avro_schema_for("sales.order-items", [{"name": "a b", "type_oid": 23, "key": True}])
    assert s["namespace"] == "heliosdb.cdc.sales"
    assert s["name"] == "order_items_event"
    f = _field_types(s)
    assert list(f) == ["a_b"]
    fastavro.parse_schema(s)


def test_columns_inferred_when_types_unknown() -> None:
    reg = AvroSchemaRegistry()
    ev = {**event(value={"id": 1, "x": 2.5, "s": "t", "j": {"k": 1}, "b": False}), "key": {"id": 1}}
    s = reg.schema_for_event(ev)
    t = _field_types(s.schema)
    assert t == {
        "id": ["null", "long"],
        "x": ["null", "double"],
        "s": ["null", "string"],
        "j": ["null", "string"],
        "b": ["null", "boolean"],
    }
    rec = decode_with_schema(s.encode_single_object(ev), s.json)
    assert rec["value"]["x"] == 2.5 and orjson.loads(rec["value"]["j"]) == {"k": 1}


@pytest.mark.parametrize("from_body", [False, True])
async def test_encoder_self_describing_headers(from_body: bool) -> None:
    enc = AvroEncoder()
    enc.set_columns("orders", COLUMNS)
    ev_dict = event()
    body = orjson.dumps(ev_dict, default=str)
    ev = OutboundEvent(
        event_id="evt_abc123",
        sequence=12345,
        table="orders",
        operation="UPDATE",
        key=b'{"id":123}',
        body=body,
        timestamp="2026-01-04T12:00:00Z",
        event=None if from_body else ev_dict,
    )
    data, headers = await enc.encode(ev)
    rec = decode_with_schema(data, headers[SCHEMA_HEADER])
    assert rec["value"]["price"] == Decimal("99.99")
    assert rec["sequence"] == 12345
