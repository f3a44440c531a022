"""Avro bodies written from the decoded values (sinks/_avro_plan.py) are fastavro's bytes.

Every column kind, nulls, deletes, values a logical type cannot hold (NaN, infinity,
BC), values out of an Avro type's range (the same error as before), and the schema
picked per event shape when no column types are known: both paths, many rows.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_cdc._errors import SinkError
from heliosdb_cdc.sinks._avro import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroEncoder,
    AvroSchema,
    AvroSchemaRegistry,
    _event_ts_us,
    decode_with_schema,
)
from heliosdb_cdc.sinks._avro_plan import Unsupported
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
    {"name": "name", "type_oid": 25, "key": True},
    {"name": "code", "type_oid": 1043, "key": False},
    {"name": "uid", "type_oid": 2950, "key": False},
    {"name": "mood", "type_oid": 16390, "key": False},  # a user enum
    {"name": "at", "type_oid": 1184, "key": False},
    {"name": "local", "type_oid": 1114, "key": False},
    {"name": "day", "type_oid": 1082, "key": False},
    {"name": "t", "type_oid": 1083, "key": False},
    {"name": "doc", "type_oid": 3802, "key": False},
    {"name": "js", "type_oid": 114, "key": False},
    {"name": "tags", "type_oid": 1009, "key": False},
    {"name": "blob", "type_oid": 17, "key": False},
    {"name": "2nd col", "type_oid": 25, "key": False},
]

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_ints = st.integers(-(2**63), 2**64 - 1)  # what JSON events can carry (orjson)
_decimals = st.decimals(min_value=-(10**8), max_value=10**8, places=2, allow_nan=False).map(str)
_ts = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
_special_ts = st.sampled_from(["infinity", "-infinity", "2020-01-01 00:00:00 BC", "2026-01-04 12:00:00+02"])

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(-(2**63), 2**63 - 1) | st.integers(2**63, 2**64 - 1) | st.booleans(),
    "small": st.integers(-(2**15), 2**15) | st.sampled_from([2**31, -(2**31) - 1, "12"]),
    "n4": st.integers(-(2**31), 2**31 - 1) | st.floats(-1e6, 1e6),
    "f4": st.floats(width=32) | st.sampled_from(["NaN", "Infinity", "-Infinity", 1e39, 3]),
    "f8": st.floats() | st.sampled_from(["NaN", "Infinity", "-Infinity", "1.5"]) | st.integers(-100, 100),
    "price": _decimals
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1.234", "123456789012.00", "-0.00", "0"])
    | st.floats(-1e6, 1e6)
    | st.integers(-(10**6), 10**6),
    "ratio": st.decimals(allow_nan=False, allow_infinity=False).map(str) | st.floats() | _ints,
    "ok": st.booleans() | st.sampled_from(["t", "f", "true", 1]),
    "name": st.text(),
    "code": st.text(max_size=40) | _ints,
    "uid": st.uuids().map(str),
    "mood": st.text(max_size=10) | st.lists(_ints, max_size=3),
    "at": _ts | _special_ts,
    "local": st.datetimes().map(lambda d: d.isoformat()) | _special_ts,
    "day": st.dates().map(lambda d: d.isoformat())
    | st.sampled_from(["infinity", "-infinity", "0044-03-15 BC"]),
    "t": st.times().map(lambda t: t.isoformat()),
    "doc": _json,
    "js": _json,
    "tags": st.lists(st.text(max_size=5) | st.none(), max_size=4),
    "blob": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    "2nd col": st.text(max_size=300),  # over 63 bytes: a two-byte length
}


@st.composite
def rows(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if draw(st.integers(0, 5)) == 0:
            if draw(st.booleans()):
                continue  # an unchanged TOAST value: absent
            out[name] = None
        else:
            out[name] = draw(VALUES[name])
    return out


@st.composite
def events(draw: st.DrawFn, names: list[str], table: str = "public.orders") -> dict[str, Any]:
    op = draw(st.sampled_from(["INSERT", "UPDATE", "DELETE", "READ"]))
    value = None if op == "DELETE" else orjson.loads(orjson.dumps(draw(rows(names))))
    old = draw(st.none() | rows(names)) if op in ("UPDATE", "DELETE") else None
    old = orjson.loads(orjson.dumps(old)) if old is not None else None
    src = value or old or {}
    key = {k: src[k] for k in ("id", "name") if k in src}
    return {
        "event_id": draw(st.text(min_size=1, max_size=30)),
        "timestamp": draw(_ts | st.sampled_from(["2026-01-04T12:00:00Z", "not a time", None])),
        "sequence": draw(st.integers(0, 2**62)),
        "operation": op,
        "database": "production",
        "table": table,
        "key": key or None,
        "value": value,
        "old_value": old,
        "transaction_id": "txn_" + draw(st.text(max_size=10)),
    }


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except SinkError as exc:
        return ("SinkError", str(exc))


def _same(schema: AvroSchema, event: dict[str, Any]) -> bool:
    """Plan and fastavro agree on ``event``; True when the plan wrote it itself."""
    reference = _outcome(schema.encode_body_fastavro, event)
    assert _outcome(schema.encode_body, event) == reference
    assert schema.plan is not None
    try:
        direct = schema.plan.body(event, _event_ts_us(event), schema.table)
    except (Unsupported, ValueError, TypeError, OverflowError):
        return False
    assert direct == reference
    return True


KNOWN = AvroSchemaRegistry().schema_for("public.orders", COLUMNS)
NAMES = [c["name"] for c in COLUMNS]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(NAMES))
def test_plan_writes_fastavros_bytes_for_every_column_type(event: dict[str, Any]) -> None:
    _same(KNOWN, event)


TYPICAL = {
    "id": 123,
    "small": 7,
    "n4": -5,
    "f4": 1.5,
    "f8": "NaN",
    "price": "99.99",
    "ratio": "3.14159265358979323846264338327950288",
    "ok": True,
    "name": "Ada",
    "code": "X1",
    "uid": "8f1c2d7e-0000-4000-8000-000000000001",
    "mood": "happy",
    "at": "2026-01-04T12:00:00.123456+00:00",
    "local": "2026-01-04T12:00:00.123",
    "day": "2026-01-04",
    "t": "12:30:00.5",
    "doc": {"a": [1, 2, {"b": None}]},
    "js": [1, "x"],
    "tags": ["x", None],
    "blob": "AAEC",
    "2nd col": "second" * 20,
}


def test_typical_rows_are_written_by_the_plan() -> None:
    """Not fastavro compared with itself: the plan writes ordinary rows on its own."""
    base = {"event_id": "e", "timestamp": "2026-01-04T12:00:00Z", "sequence": 1, "database": "d"}
    insert = {**base, "operation": "INSERT", "table": "public.orders", "key": {"id": 123, "name": "Ada"}}
    assert _same(KNOWN, {**insert, "value": TYPICAL})
    assert _same(KNOWN, {**insert, "operation": "DELETE", "value": None, "old_value": {"id": 123}})
    nulls = dict.fromkeys(TYPICAL)
    assert _same(KNOWN, {**insert, "operation": "UPDATE", "value": TYPICAL, "old_value": nulls})


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("small", 2**31),  # outside Avro int
        ("id", 2**64),  # outside Avro long
        ("price", "1.234"),  # more digits than numeric(10, 2)'s scale
        ("price", "123456789012.00"),  # more digits than its precision
        ("blob", "not base64!"),
        ("n4", "x"),
    ],
)
def test_values_avro_cannot_hold_fail_as_before(column: str, value: Any) -> None:
    event = {"table": "public.orders", "key": {"id": 1}, "value": {"id": 1, column: value}}
    with pytest.raises(SinkError, match="does not fit Avro schema"):
        KNOWN.encode_body(event)
    assert _outcome(KNOWN.encode_body, event) == _outcome(KNOWN.encode_body_fastavro, event)


def test_special_values_use_the_string_branch() -> None:
    event = {
        "timestamp": "2026-01-04T12:00:00Z",
        "table": "public.orders",
        "key": {"id": 1},
        "value": {"id": 1, "price": "NaN", "at": "infinity", "day": "0044-03-15 BC", "f8": "-Infinity"},
    }
    assert _same(KNOWN, event)
    rec = decode_with_schema(KNOWN.encode_single_object(event), KNOWN.json)
    assert rec["value"]["price"] == "NaN" and rec["value"]["at"] == "infinity"
    assert rec["value"]["day"] == "0044-03-15 BC" and rec["value"]["f8"] == float("-inf")


# -- no column types known: the schema inferred per event, remembered per event shape --------------
_SHAPE_NAMES = ["id", "n", "x", "s", "j", "b"]
_SHAPE_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(),
    st.text(max_size=5),
    st.lists(_ints, max_size=2),
    st.dictionaries(st.text(max_size=2), _ints),
)


@st.composite
def shaped_events(draw: st.DrawFn) -> dict[str, Any]:
    def row() -> dict[str, Any]:
        names = draw(st.permutations(_SHAPE_NAMES))[: draw(st.integers(1, len(_SHAPE_NAMES)))]
        return {n: draw(_SHAPE_VALUES) for n in names}

    value = draw(st.none() | st.builds(row))
    old = draw(st.none() | st.builds(row))
    decoded: dict[str, Any] = orjson.loads(
        orjson.dumps(
            {
                "event_id": "e",
                "timestamp": "2026-01-04T12:00:00Z",
                "sequence": 1,
                "operation": "UPDATE",
                "database": "d",
                "table": draw(st.sampled_from(["a", "b"])),
                "key": draw(st.none() | st.builds(row)),
                "value": value,
                "old_value": old,
                "transaction_id": "t",
            }
        )
    )
    return decoded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(shaped_events(), min_size=1, max_size=25))
def test_inferred_schemas_and_bytes_match_the_per_event_path(evs: list[dict[str, Any]]) -> None:
    """The same events in the same order: the schema per shape is the one the
    per-event derivation gives, and the bytes are fastavro's."""
    new, old = AvroSchemaRegistry(), AvroSchemaRegistry()
    for ev in evs:
        a, b = new.schema_for_decoded(ev), old.schema_for_event(ev)
        assert (a.table, a.version, a.fingerprint, a.json) == (b.table, b.version, b.fingerprint, b.json)
        assert [f.kind for f in a.fields] == [f.kind for f in b.fields]
        assert _outcome(a.encode_body, ev) == _outcome(b.encode_body_fastavro, ev)


def test_known_columns_replace_the_shape_cache() -> None:
    reg = AvroSchemaRegistry()
    ev = {"table": "t", "key": {"id": 1}, "value": {"id": 1, "n": 2}}
    inferred = reg.schema_for_decoded(ev)
    assert [f.kind.avro for f in inferred.fields] == ["long", "long"]
    reg.set_columns("t", [{"name": "id", "type_oid": 23, "key": True}, {"name": "n", "type_oid": 21}])
    known = reg.schema_for_decoded(ev)
    assert known is not inferred and [f.kind.avro for f in known.fields] == ["int", "int"]


def test_encoder_headers_and_wire_formats() -> None:
    """Through AvroEncoder (as the Kafka and Kinesis sinks call it): header, schema
    headers, body equal to fastavro's."""
    enc = AvroEncoder()
    enc.set_columns("public.orders", COLUMNS)
    event = {
        "event_id": "evt_1",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": 7,
        "operation": "INSERT",
        "database": "d",
        "table": "public.orders",
        "key": {"id": 5, "name": "n"},
        "value": {"id": 5, "name": "n", "price": "12.50", "doc": {"a": [1]}},
        "old_value": None,
        "transaction_id": "t",
    }
    ev = OutboundEvent("evt_1", 7, "public.orders", "INSERT", b"{}", orjson.dumps(event), "")
    payload, headers = asyncio.run(enc.encode(ev))
    payload2, headers2 = asyncio.run(enc.encode(ev))
    assert payload == payload2 and headers == headers2 and headers is not headers2
    assert payload[:2] == SINGLE_OBJECT_MAGIC and payload[2:10] == KNOWN.fingerprint_bytes
    assert payload[10:] == KNOWN.encode_body_fastavro(event)
    assert headers["heliosdb.avro.schema"] == KNOWN.json
    assert decode_with_schema(payload, headers["heliosdb.avro.schema"])["value"]["doc"] == '{"a":[1]}'
    body = KNOWN.encode_confluent(3, event)
    assert body[:1] == CONFLUENT_MAGIC and body[5:] == KNOWN.encode_body_fastavro(event)


def test_fastavro_only_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """HELIOSDB_CDC_AVRO_FASTAVRO=1 (the benchmark's reference path): no plan, same bytes."""
    event = {
        "timestamp": "2026-01-04T12:00:00Z",
        "table": "public.orders",
        "key": {"id": 1},
        "value": TYPICAL,
    }
    monkeypatch.setenv("HELIOSDB_CDC_AVRO_FASTAVRO", "1")
    reference = AvroSchemaRegistry().schema_for("public.orders", COLUMNS)
    assert reference.plan is None
    monkeypatch.setenv("HELIOSDB_CDC_AVRO_FASTAVRO", "0")
    planned = AvroSchemaRegistry().schema_for("public.orders", COLUMNS)
    assert planned.plan is not None
    assert (
        reference.encode_body(event)
        == planned.encode_body(event)
        == planned.plan.body(event, _event_ts_us(event), "public.orders")
    )


def test_schema_then_encode_parses_the_body_once() -> None:
    """Kinesis asks for the schema (to write its .avsc) and then encodes the same event:
    one parse of the body, and a new event is parsed afresh."""
    enc = AvroEncoder()
    body = orjson.dumps({"table": "t", "key": {"id": 1}, "value": {"id": 1}})
    ev = OutboundEvent("e", 1, "t", "INSERT", b"{}", body, "")
    schema, event = enc.schema_for(ev)
    again, event2 = enc.schema_for(ev)
    assert again is schema and event2 is event
    other = OutboundEvent("e", 2, "t", "INSERT", b"{}", body, "")
    assert enc.schema_for(other)[1] is not event
    payload, _ = asyncio.run(enc.encode(ev))
    assert payload[10:] == schema.encode_body_fastavro(event)
    # new column types for the table: the same event is looked up again
    enc.set_columns("t", [{"name": "id", "type_oid": 23, "key": True}])
    assert enc.schema_for(ev)[0] is not schema
