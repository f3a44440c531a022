"""FORMAT AVRO: schemas derived from PostgreSQL column types, and their encodings.

One Avro record schema per table describes the whole event envelope (the
guide's event: ``event_id``, ``timestamp``, ``sequence``, ``operation``,
``database``, ``table``, ``key``, ``value``, ``old_value``, ``transaction_id``).
``key`` is a nested record of the key columns, ``value``/``old_value`` a nested
record of every column; all three may be null. Every column field is a union
with ``null`` (default null).

Type mapping (PostgreSQL type oid -> Avro):

=====================================  =========================================
int2, int4                             int
int8, oid, xid, xid8                   long
float4 / float8                        float / double (NaN and infinities kept)
numeric(p, s) (typmod known)           bytes, logicalType decimal(p, s); the
                                       union also has a string branch for NaN
                                       and infinities, which a decimal cannot hold
numeric (no typmod)                    string: an unconstrained numeric has no
                                       fixed scale, and an Avro decimal needs one;
                                       the string keeps every digit
bool                                   boolean
text, varchar, bpchar, name, char,     string
uuid, enum, money, timetz, inet...
bytea                                  bytes
timestamp, timestamptz                 long, logicalType timestamp-micros (UTC;
                                       a timestamp without time zone is read as
                                       UTC); string branch for +/-infinity, BC
date                                   int, logicalType date; string branch for
                                       +/-infinity
time                                   long, logicalType time-micros
json, jsonb, arrays                    string holding the value's JSON text
anything else (user types: enums,      string: the same text the JSON event
domains, ranges...)                    carries (PostgreSQL's text output)
=====================================  =========================================

Encodings (see docs/avro.md for decoders):

* single-object encoding (Avro spec): ``C3 01`` + 8-byte little-endian
  CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form + binary body;
* Confluent wire format: ``00`` + 4-byte big-endian schema id + binary body.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from io import BytesIO
from typing import Any

import fastavro
import orjson
from fastavro.schema import to_parsing_canonical_form

from .._errors import SinkError
from .._event import JsonText
from ._avro_plan import Plan, compile_plan
from ._rawjson import exact_event

# set (to anything but "" or "0"): every body through fastavro, the reference path the
# per-column writers are compared with (the benchmark's kafka_avro_fastavro scenario)
ENV_FASTAVRO_ONLY = "HELIOSDB_CDC_AVRO_FASTAVRO"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SCHEMA_HEADER = "heliosdb.avro.schema"
FINGERPRINT_HEADER = "heliosdb.avro.fingerprint"
NAMESPACE = "heliosdb.cdc"

# --------------------------------------------------------------------------- CRC-64-AVRO

_EMPTY64 = 0xC15D213AA4D7A795


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _make_table()


def crc64_avro(data: bytes) -> int:
    """The Avro spec's 64-bit Rabin fingerprint (CRC-64-AVRO)."""
    fp = _EMPTY64
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


def canonical_form(schema: Mapping[str, Any] | str) -> str:
    """The Parsing Canonical Form of a schema (what fingerprints are taken of)."""
    parsed = orjson.loads(schema) if isinstance(schema, str) else dict(schema)
    return str(to_parsing_canonical_form(parsed))


def fingerprint(schema: Mapping[str, Any] | str) -> int:
    return crc64_avro(canonical_form(schema).encode())


# --------------------------------------------------------------------------- type mapping

_INT = {21, 23}
_LONG = {20, 26, 28, 5069}
_JSON = {114, 3802}
_TIMESTAMP = {1114, 1184}
_STRING = {25, 1043, 1042, 18, 19, 2950, 790, 1266, 869, 650, 829, 774, 1186, 142}
_ARRAY_OIDS = {
    1000, 1001, 1005, 1007, 1016, 1028, 1021, 1022, 1231, 1009, 1015, 1014, 1002, 1003,
    199, 3807, 1115, 1185, 1182, 1183, 1270, 1187, 2951, 1041, 651, 1040,
}  # fmt: skip

_TS_MICROS = {"type": "long", "logicalType": "timestamp-micros"}
_DATE = {"type": "int", "logicalType": "date"}
_TIME_MICROS = {"type": "long", "logicalType": "time-micros"}


def numeric_precision_scale(typmod: int | None) -> tuple[int, int] | None:
    """``numeric(p, s)`` from a PostgreSQL type modifier; None when unconstrained."""
    if typmod is None or typmod < 4:
        return None
    t = typmod - 4
    precision, scale = (t >> 16) & 0xFFFF, t & 0xFFFF
    if precision < 1 or scale > precision:
        return None  # negative scales (PG 15+) come through as > precision: use string
    return precision, scale


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one column is encoded: its Avro type (without null) and value converter name."""

    avro: Any
    conv: str
    extra: tuple[tuple[str, Any], ...] = ()


def _column_kind(type_oid: int, typmod: int | None) -> _Kind:
    if type_oid in _INT:
        return _Kind("int", "int")
    if type_oid in _LONG:
        return _Kind("long", "int")
    if type_oid == 700:
        return _Kind("float", "float")
    if type_oid == 701:
        return _Kind("double", "float")
    if type_oid == 16:
        return _Kind("boolean", "bool")
    if type_oid == 17:
        return _Kind("bytes", "bytea")
    if type_oid == 1700:
        ps = numeric_precision_scale(typmod)
        if ps is None:
            return _Kind("string", "numeric_str", (("heliosdb.encoding", "numeric"),))
        p, s = ps
        dec = {"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}
        return _Kind([dec, "string"], "decimal")
    if type_oid in _TIMESTAMP:
        return _Kind([_TS_MICROS, "string"], "timestamp")
    if type_oid == 1082:
        return _Kind([_DATE, "string"], "date")
    if type_oid == 1083:
        return _Kind(_TIME_MICROS, "time")
    if type_oid in _JSON or type_oid in _ARRAY_OIDS:
        return _Kind("string", "json", (("heliosdb.encoding", "json"),))
    if type_oid in _STRING:
        return _Kind("string", "str")
    # user-defined and unmapped types: the text the JSON event carries
    return _Kind("string", "text")


def _kind_from_value(value: Any) -> _Kind:
    """Column type when no type oids are known (inferred from one value)."""
    if isinstance(value, bool):
        return _Kind("boolean", "bool")
    if isinstance(value, int):
        return _Kind("long", "int")
    if isinstance(value, (float, Decimal)):
        # a number with a fraction, however the event was read (a double, as ever: the
        # column's type, when given, makes numeric a decimal or a string with every digit)
        return _Kind("double", "float")
    if isinstance(value, (dict, list)):
        return _Kind("string", "json", (("heliosdb.encoding", "json"),))
    return _Kind("string", "text")


_NAME_RE = re.compile(r"[^A-Za-z0-9_]")


def avro_name(name: str) -> str:
    """An Avro-legal name ([A-Za-z_][A-Za-z0-9_]*) for a column or table name."""
    n = _NAME_RE.sub("_", name) or "_"
    if n[0].isdigit():
        n = "_" + n
    return n


@dataclass(frozen=True, slots=True)
class _Field:
    column: str  # PostgreSQL column name
    avro: str  # Avro field name
    kind: _Kind
    key: bool


def _fields(columns: Sequence[Mapping[str, Any]]) -> list[_Field]:
    out: list[_Field] = []
    used: set[str] = set()
    for col in columns:
        name = str(col["name"])
        base = avro_name(name)
        n, i = base, 1
        while n in used:
            i += 1
            n = f"{base}_{i}"
        used.add(n)
        typmod = col.get("typmod", col.get("type_modifier"))
        if "type_oid" in col and col["type_oid"] is not None:
            kind = _column_kind(int(col["type_oid"]), None if typmod is None else int(typmod))
        else:
            kind = _kind_from_value(col.get("sample"))
        out.append(_Field(name, n, kind, bool(col.get("key", False))))
    return out


def _record(name: str, fields: Iterable[_Field]) -> dict[str, Any]:
    out = []
    for f in fields:
        branches = f.kind.avro if isinstance(f.kind.avro, list) else [f.kind.avro]
        fd: dict[str, Any] = {"name": f.avro, "type": ["null", *branches], "default": None}
        if f.avro != f.column:
            fd["heliosdb.column"] = f.column
        for k, v in f.kind.extra:
            fd[k] = v
        out.append(fd)
    return {"type": "record", "name": name, "fields": out}


def avro_schema_for(table: str, columns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The Avro schema (as JSON-ready dict) of the events of one table.

    ``columns``: ``[{"name", "type_oid", "key", optional "typmod"}]`` in table
    order, as the decoder's relation gives them.
    """
    return _build(table, _fields(columns))


def _build(table: str, fields: list[_Field]) -> dict[str, Any]:
    schema_name, _, tname = table.rpartition(".")
    namespace = NAMESPACE + (f".{avro_name(schema_name)}" if schema_name else "")
    base = avro_name(tname)
    key_fields = [f for f in fields if f.key]
    value = _record(f"{base}_value", fields)
    key = _record(f"{base}_key", key_fields)
    return {
        "type": "record",
        "name": f"{base}_event",
        "namespace": namespace,
        "doc": f"heliosdb-cdc change event of table {table}",
        "heliosdb.table": table,
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "timestamp", "type": _TS_MICROS},
            {"name": "sequence", "type": "long"},
            {"name": "operation", "type": "string"},
            {"name": "database", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "key", "type": ["null", key], "default": None},
            {"name": "value", "type": ["null", value], "default": None},
            {"name": "old_value", "type": ["null", f"{base}_value"], "default": None},
            {"name": "transaction_id", "type": "string"},
        ],
    }


# --------------------------------------------------------------------------- values


def _parse_ts_micros(v: str) -> int | str:
    if v in ("infinity", "-infinity") or v.endswith(" BC"):
        return v
    s = v.replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return v
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_FALLBACK_UNIONS = {"decimal", "timestamp", "date"}


def _convert(conv: str, v: Any) -> Any:
    out = _convert_value(conv, v)
    if conv in _FALLBACK_UNIONS and isinstance(out, str):
        return ("string", out)  # fastavro: take the union's string branch explicitly
    return out


def _convert_value(conv: str, v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, JsonText):  # the value's text in the stored event (sinks/_rawjson.py)
        if conv in ("json", "numeric_str") and not v.text.startswith('"'):
            return v.text  # exactly as PostgreSQL wrote it: every digit, duplicate keys
        v = v.parse()
    if conv == "int":
        return int(v)
    if conv == "float":
        if isinstance(v, str):
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, float(v))
        return float(v)
    if conv == "bool":
        return v if isinstance(v, bool) else str(v).lower() in ("t", "true", "1")
    if conv == "bytea":
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        return base64.b64decode(v)
    if conv == "decimal":
        try:
            d = v if isinstance(v, Decimal) else Decimal(str(v))
        except InvalidOperation:
            return str(v)
        return d if d.is_finite() else str(v)
    if conv == "numeric_str":
        if isinstance(v, Decimal) and v.is_finite():
            return format(v, "f")  # positional, every digit (str() would say 9.9E-7)
        return str(v)
    if conv == "timestamp":
        if isinstance(v, datetime):
            return _parse_ts_micros(v.isoformat())
        return _parse_ts_micros(str(v))
    if conv == "date":
        if isinstance(v, date):
            return (v - date(1970, 1, 1)).days
        try:
            return (date.fromisoformat(str(v)) - date(1970, 1, 1)).days
        except ValueError:
            return str(v)
    if conv == "time":
        t = v if isinstance(v, time) else time.fromisoformat(str(v))
        return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if conv == "json":
        return orjson.dumps(v, default=_json_default).decode()
    if conv == "str":
        return v if isinstance(v, str) else str(v)
    # "text": user types arrive as text; anything structured is kept as JSON text
    if isinstance(v, str):
        return v
    return orjson.dumps(v, default=_json_default).decode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, JsonText):
        return orjson.Fragment(obj.text)
    if isinstance(obj, Decimal):
        # a JSON number with every digit, as in the JSON event (not a string)
        return orjson.Fragment(format(obj, "f")) if obj.is_finite() else str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _fastavro_only() -> bool:
    return os.environ.get(ENV_FASTAVRO_ONLY, "") not in ("", "0")


_ts_memo: tuple[Any, int] = (None, 0)


def _event_ts_us(event: Mapping[str, Any]) -> int:
    """The envelope's ``timestamp`` as :meth:`AvroSchema.datum` computes it; the events of
    one transaction share it, so the last one parsed is kept."""
    global _ts_memo
    ts = event.get("timestamp")
    if ts is None:
        return 0
    last, us = _ts_memo
    if ts == last and type(ts) is type(last):
        return us
    parsed = _parse_ts_micros(str(ts))
    us = 0 if isinstance(parsed, str) else parsed
    _ts_memo = (ts, us)
    return us


# --------------------------------------------------------------------------- schemas


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """One version of one table's event schema."""

    table: str
    version: int  # 1, 2, ... per table, bumped when the fingerprint changes
    schema: dict[str, Any]  # JSON-ready schema
    fingerprint: int  # CRC-64-AVRO of the Parsing Canonical Form
    parsed: Any = field(repr=False, compare=False)
    fields: tuple[_Field, ...] = field(repr=False, compare=False)
    # column writers for the direct path (``_avro_plan``); None: fastavro for every event
    plan: Plan | None = field(default=None, repr=False, compare=False)
    json_text: str = field(default="", repr=False, compare=False)

    @property
    def fingerprint_bytes(self) -> bytes:
        """The 8 bytes of the single-object header (little-endian)."""
        return self.fingerprint.to_bytes(8, "little")

    @property
    def json(self) -> str:
        return self.json_text or orjson.dumps(self.schema).decode()

    @property
    def canonical(self) -> str:
        return canonical_form(self.schema)

    def datum(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The guide's event dict -> the record fastavro writes."""

        def row(d: Mapping[str, Any] | None, key_only: bool) -> dict[str, Any] | None:
            if d is None:
                return None
            return {
                f.avro: _convert(f.kind.conv, d.get(f.column)) for f in self.fields if f.key or not key_only
            }

        ts = event.get("timestamp")
        ts_us = _parse_ts_micros(str(ts)) if ts is not None else 0
        if isinstance(ts_us, str):
            ts_us = 0
        key = event.get("key")
        return {
            "event_id": str(event.get("event_id", "")),
            "timestamp": ts_us,
            "sequence": int(event.get("sequence", 0)),
            "operation": str(event.get("operation", "")),
            "database": str(event.get("database", "")),
            "table": str(event.get("table", self.table)),
            "key": row(key, True) if key else None,
            "value": row(event.get("value"), False),
            "old_value": row(event.get("old_value"), False),
            "transaction_id": str(event.get("transaction_id", "")),
        }

    def encode_body(self, event: Mapping[str, Any]) -> bytes:
        """Avro binary encoding of one event (no header).

        Written by the schema's plan from the event's values; an event the plan
        leaves aside (``_avro_plan.Unsupported``, or anything unexpected) goes through
        fastavro, which gives the same bytes or the error.
        """
        if self.plan is not None:
            try:
                return self.plan.body(event, _event_ts_us(event), self.table)
            except Exception:  # Unsupported, or anything else: fastavro (the reference) decides
                pass
        return self.encode_body_fastavro(event)

    def encode_body_fastavro(self, event: Mapping[str, Any]) -> bytes:
        """The same body through ``fastavro.schemaless_writer`` (the reference encoding)."""
        buf = BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.parsed, self.datum(event))
        except (ValueError, TypeError, OverflowError) as exc:
            raise SinkError(
                f"event does not fit Avro schema of {self.table}: {exc}",
                table=self.table,
                event_id=event.get("event_id"),
            ) from exc
        return buf.getvalue()

    def encode_single_object(self, event: Mapping[str, Any]) -> bytes:
        """Avro single-object encoding: C3 01, 8-byte fingerprint, body."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint_bytes + self.encode_body(event)

    def encode_confluent(self, schema_id: int, event: Mapping[str, Any]) -> bytes:
        """Confluent Schema Registry wire format: 00, 4-byte schema id, body."""
        return CONFLUENT_MAGIC + struct.pack(">I", schema_id) + self.encode_body(event)


def _columns_from_event(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Column list inferred from an event's values, when no type oids were given."""
    cols: dict[str, dict[str, Any]] = {}
    key = event.get("key") or {}
    for part in ("value", "old_value", "key"):
        row = event.get(part) or {}
        for name, v in row.items():
            if isinstance(v, JsonText):
                v = v.parse()
            c = cols.setdefault(name, {"name": name, "sample": None, "key": name in key})
            if c["sample"] is None and v is not None:
                c["sample"] = v
    return list(cols.values())


class AvroSchemaRegistry:
    """Derives, caches and versions the Avro schemas of tables.

    ``schema_for(table, columns)`` returns the current :class:`AvroSchema`;
    a column change that changes the fingerprint makes a new version. Every
    schema ever made is kept, so :meth:`by_fingerprint` can decode old data.
    """

    def __init__(self) -> None:
        self._columns: dict[str, list[dict[str, Any]]] = {}
        self._cache: dict[tuple[str, bytes], AvroSchema] = {}
        self._versions: dict[str, list[AvroSchema]] = {}
        self._by_fp: dict[int, AvroSchema] = {}
        # event shape (table, column names and value types per part) -> schema
        self._by_shape: dict[Any, AvroSchema] = {}
        self.generation = 0  # bumped by set_columns: what was looked up before may be stale

    def set_columns(self, table: str, columns: Sequence[Mapping[str, Any]]) -> AvroSchema:
        """Remember a table's columns (from the decoder's relation message)."""
        self._columns[table] = [dict(c) for c in columns]
        self._by_shape.clear()
        self.generation += 1
        return self.schema_for(table, columns)

    def columns(self, table: str) -> list[dict[str, Any]] | None:
        return self._columns.get(table)

    def schema_for(self, table: str, columns: Sequence[Mapping[str, Any]]) -> AvroSchema:
        ident = orjson.dumps(
            [
                [c["name"], c.get("type_oid"), bool(c.get("key")), c.get("typmod")]
                if "type_oid" in c
                else [c["name"], _kind_from_value(c.get("sample")).avro, bool(c.get("key"))]
                for c in columns
            ]
        )
        hit = self._cache.get((table, ident))
        if hit is not None:
            return hit
        fields = _fields(columns)
        schema = _build(table, fields)
        fp = fingerprint(schema)
        versions = self._versions.setdefault(table, [])
        found = next((s for s in versions if s.fingerprint == fp), None)
        if found is None:
            found = AvroSchema(
                table=table,
                version=len(versions) + 1,
                schema=schema,
                fingerprint=fp,
                parsed=fastavro.parse_schema(schema),
                fields=tuple(fields),
                plan=None if _fastavro_only() else compile_plan(fields, _convert_value),
                json_text=orjson.dumps(schema).decode(),
            )
            versions.append(found)
            self._by_fp[fp] = found
        self._cache[(table, ident)] = found
        return found

    def schema_for_event(
        self, event: Mapping[str, Any], columns: Sequence[Mapping[str, Any]] | None = None
    ) -> AvroSchema:
        """The schema for one event: given columns, else the table's known ones, else inferred."""
        table = str(event.get("table", ""))
        cols = columns if columns is not None else self._columns.get(table)
        if cols is None:
            cols = _columns_from_event(event)
        return self.schema_for(table, cols)

    def schema_for_decoded(self, event: Mapping[str, Any]) -> AvroSchema:
        """:meth:`schema_for_event` without columns, remembered per event shape.

        The schema :meth:`schema_for_event` picks depends only on the table, the
        table's known columns, or else the names, order and value types of the
        event's ``value``, ``old_value`` and ``key``: events of one shape get the
        schema the first of them got, without deriving it again.
        """
        table = str(event.get("table", ""))
        if table in self._columns:
            shape: Any = (table,)
        else:
            parts: list[tuple[tuple[str, ...], tuple[type, ...]] | None] = []
            for part in ("value", "old_value", "key"):
                row = event.get(part)
                if not row:
                    parts.append(None)
                elif type(row) is dict:
                    parts.append((tuple(row), tuple(map(type, row.values()))))
                else:
                    return self.schema_for_event(event)  # an odd event: no shortcut
            shape = (table, *parts)
        found = self._by_shape.get(shape)
        if found is None:
            found = self.schema_for_event(event)
            if len(self._by_shape) >= 4096:
                self._by_shape.clear()
            self._by_shape[shape] = found
        return found

    def versions(self, table: str) -> list[AvroSchema]:
        return list(self._versions.get(table, []))

    def by_fingerprint(self, fp: int) -> AvroSchema | None:
        return self._by_fp.get(fp)


# --------------------------------------------------------------------------- decoding


def decode_single_object(
    data: bytes, schemas: Mapping[int, Mapping[str, Any] | str] | AvroSchemaRegistry
) -> dict[str, Any]:
    """Decode a single-object-encoded message; ``schemas`` maps fingerprint -> schema."""
    if data[:2] != SINGLE_OBJECT_MAGIC or len(data) < 10:
        raise ValueError("not Avro single-object encoding (no C3 01 header)")
    fp = int.from_bytes(data[2:10], "little")
    if isinstance(schemas, AvroSchemaRegistry):
        found = schemas.by_fingerprint(fp)
        schema: Any = found.schema if found else None
    else:
        schema = schemas.get(fp)
    if schema is None:
        raise ValueError(f"unknown schema fingerprint {fp:016x}")
    if isinstance(schema, str):
        schema = orjson.loads(schema)
    out: Any = fastavro.schemaless_reader(BytesIO(data[10:]), fastavro.parse_schema(schema), None)
    return dict(out)


def decode_with_schema(data: bytes, schema_json: str | bytes) -> dict[str, Any]:
    """Decode a single-object message whose schema travels with it (Kafka header)."""
    schema = orjson.loads(schema_json)
    return decode_single_object(data, {fingerprint(schema): schema})


def decode_confluent(data: bytes, schemas: Mapping[int, Mapping[str, Any] | str]) -> dict[str, Any]:
    """Decode Confluent wire format; ``schemas`` maps schema id -> schema."""
    if data[:1] != CONFLUENT_MAGIC or len(data) < 5:
        raise ValueError("not Confluent wire format (no magic byte 0)")
    (sid,) = struct.unpack(">I", data[1:5])
    schema: Any = schemas[sid]
    if isinstance(schema, str):
        schema = orjson.loads(schema)
    out: Any = fastavro.schemaless_reader(BytesIO(data[5:]), fastavro.parse_schema(schema), None)
    return dict(out)


# --------------------------------------------------------------------------- Confluent registry


class SchemaRegistryUnavailable(SinkError):
    """The schema registry could not be reached or answered 5xx: retry later."""


class ConfluentSchemaRegistry:
    """Minimal Confluent Schema Registry client: register a schema, get its id (cached).

    ``subject`` naming is up to the caller (the Kafka sink uses
    ``<topic>-<record full name>``, the TopicRecordNameStrategy, since one
    topic carries the events of several tables).
    """

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout_s = timeout_s
        self._ids: dict[tuple[str, int], int] = {}

    async def register(self, subject: str, schema: AvroSchema) -> int:
        cached = self._ids.get((subject, schema.fingerprint))
        if cached is not None:
            return cached
        import aiohttp

        auth = aiohttp.BasicAuth(*self.auth) if self.auth else None
        url = f"{self.url}/subjects/{subject}/versions"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s), auth=auth) as http,
                http.post(
                    url,
                    data=orjson.dumps({"schema": schema.json, "schemaType": "AVRO"}),
                    headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
                ) as resp,
            ):
                text = await resp.text()
                if resp.status >= 500 or resp.status == 429:
                    raise SchemaRegistryUnavailable(
                        f"schema registry unavailable: HTTP {resp.status} {text[:300]}",
                        subject=subject,
                        registry=self.url,
                    )
                if resp.status >= 300:
                    raise SinkError(
                        f"schema registry refused schema: HTTP {resp.status} {text[:300]}",
                        subject=subject,
                        registry=self.url,
                    )
                sid = int(orjson.loads(text)["id"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SchemaRegistryUnavailable(
                f"schema registry unreachable: {exc!r}", subject=subject, registry=self.url
            ) from exc
        self._ids[(subject, schema.fingerprint)] = sid
        return sid


# --------------------------------------------------------------------------- sink helper


class AvroEncoder:
    """Encodes :class:`OutboundEvent` s for FORMAT AVRO; shared by the Kafka and Kinesis sinks.

    * without ``confluent``: single-object encoding; ``headers`` carries the
      schema JSON (``heliosdb.avro.schema``) and fingerprint so a consumer
      needs nothing else;
    * with ``confluent``: Confluent wire format, the schema registered under
      ``subject(schema)``.

    Columns come from :meth:`set_columns` (the dispatcher calls it with the
    decoder's relation columns); without them the types are inferred from the
    event's values.
    """

    def __init__(
        self,
        registry: AvroSchemaRegistry | None = None,
        confluent: ConfluentSchemaRegistry | None = None,
        subject: Callable[[AvroSchema], str] | None = None,
    ) -> None:
        self.registry = registry or AvroSchemaRegistry()
        self.confluent = confluent
        self._subject = subject
        self._headers: dict[int, dict[str, str]] = {}  # id(schema) -> its self-describing headers
        # the last event looked up: a sink asking schema_for(ev) then encode(ev) (Kinesis
        # writes the schema file first) parses the body once
        self._last: tuple[Any, int, AvroSchema, dict[str, Any]] | None = None

    def set_columns(self, table: str, columns: Sequence[Mapping[str, Any]]) -> AvroSchema:
        return self.registry.set_columns(table, columns)

    def schema_for(self, ev: Any) -> tuple[AvroSchema, dict[str, Any]]:
        """The schema and the event read exactly (json text, every digit), else the
        runner's decoded event when the body is not the default event (a transformation's
        output); remembered for the ``encode`` that follows."""
        last, gen = self._last, self.registry.generation
        if last is not None and last[0] is ev and last[1] == gen:
            return last[2], last[3]
        event = exact_event(ev.body)
        if event is None or (ev.event is not None and event.get("event_id") != ev.event.get("event_id")):
            event = ev.event if ev.event is not None else json.loads(ev.body, parse_float=Decimal)
        schema = self.registry.schema_for_decoded(event)
        self._last = (ev, gen, schema, event)
        return schema, event

    async def encode(self, ev: Any) -> tuple[bytes, dict[str, str]]:
        """``(payload, extra headers)`` for one OutboundEvent."""
        schema, event = self.schema_for(ev)
        if self.confluent is not None:
            subject = (
                self._subject(schema)
                if self._subject
                else f"{schema.schema['namespace']}.{schema.schema['name']}"
            )
            sid = await self.confluent.register(subject, schema)
            return schema.encode_confluent(sid, event), {}
        headers = self._headers.get(id(schema))
        if headers is None:
            headers = {SCHEMA_HEADER: schema.json, FINGERPRINT_HEADER: f"{schema.fingerprint:016x}"}
            self._headers[id(schema)] = headers  # the registry keeps every schema: ids stay unique
        return schema.encode_single_object(event), dict(headers)
