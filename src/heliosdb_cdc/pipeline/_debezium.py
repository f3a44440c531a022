"""Debezium's JSON envelope for the PostgreSQL connector (``format: debezium``).

Pure functions from the default event (a decoded dict) plus the table's column
types to Debezium's ``before``/``after``/``source``/``op``/``ts_ms`` envelope,
with the value conversions of Debezium's defaults (``decimal.handling.mode=precise``,
``time.precision.mode=adaptive``, ``binary.handling.mode=bytes``,
``interval.handling.mode=numeric``). The column types come from a
:class:`ColumnCatalog` (one catalog query per table, repeated when an event names
a column it does not know, e.g. after ``ALTER TABLE ... ADD COLUMN``).

What still differs from Debezium is listed in docs/migrating-from-debezium.md.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from .._errors import SourceError

# Debezium's placeholder for an unchanged TOASTed value it did not receive
UNAVAILABLE = "__debezium_unavailable_value"
OPS = {"INSERT": "c", "UPDATE": "u", "DELETE": "d", "READ": "r"}
_EPOCH = date(1970, 1, 1)
_DAYS_PER_MONTH = 365.25 / 12  # Debezium's MicroDuration average month


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int  # domains resolved to their base type
    typmod: int = -1
    primary_key: bool = False
    elem_oid: int = 0  # element type of an array, else 0
    optional: bool = True


ColumnLookup = Callable[[str, frozenset[str]], list[Column] | None]


# -- value conversions --------------------------------------------------------------------
def _unscaled_bytes(unscaled: int) -> bytes:
    """Big-endian two's complement, shortest form (Java's BigInteger.toByteArray)."""
    bits = (unscaled if unscaled >= 0 else ~unscaled).bit_length()
    n = bits // 8 + 1
    return unscaled.to_bytes(n, "big", signed=True)


def _decimal_b64(value: Decimal, scale: int) -> str:
    with localcontext() as ctx:  # every digit: numeric holds up to 131072 of them
        ctx.prec = len(value.as_tuple().digits) + abs(scale) + 2
        unscaled = int(value.scaleb(scale).to_integral_value())
    return base64.b64encode(_unscaled_bytes(unscaled)).decode()


def _numeric(value: Any, typmod: int) -> Any:
    if value is None:
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None  # precise mode has no NaN/Infinity: Debezium writes null too
    if typmod >= 4:  # numeric(p, s): a fixed scale
        return _decimal_b64(d, (typmod - 4) & 0xFFFF)
    scale = max(0, -int(d.as_tuple().exponent))
    return {"scale": scale, "value": _decimal_b64(d, scale)}


def _money(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    neg = text.startswith("-") or text.startswith("(")
    digits = re.sub(r"[^0-9.]", "", text)
    try:
        d = Decimal(digits or "0")
    except InvalidOperation:
        return None
    return _decimal_b64(-d if neg else d, 2)


def _precision(typmod: int) -> int:
    return 6 if typmod < 0 else typmod


def _timestamp_us(text: str) -> int | None:
    if text == "infinity":
        return 9223372036825200000  # what Debezium writes for +infinity (PGStatement.DATE_POSITIVE_INFINITY)
    if text == "-infinity":
        return -9223372036832400000
    dt = datetime.fromisoformat(text).replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _timestamp(value: Any, typmod: int) -> Any:
    if value is None:
        return None
    us = _timestamp_us(str(value))
    if us is None:
        return None
    return us // 1000 if _precision(typmod) <= 3 and abs(us) < 9 * 10**18 else us


def _time_us(text: str) -> int:
    hh, mm, rest = text.split(":", 2)
    sec = Decimal(rest)
    return (int(hh) * 3600 + int(mm) * 60) * 1_000_000 + int(sec * 1_000_000)


def _time(value: Any, typmod: int) -> Any:
    if value is None:
        return None
    us = _time_us(str(value))
    return us // 1000 if _precision(typmod) <= 3 else us


def _date(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    if text == "infinity":
        return 2147483647
    if text == "-infinity":
        return -2147483648
    return (date.fromisoformat(text) - _EPOCH).days


def _timestamptz(value: Any) -> Any:
    if value is None or value in ("infinity", "-infinity"):
        return value
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timetz(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    m = re.fullmatch(r"(\d\d):(\d\d):(\d\d(?:\.\d+)?)([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?", text)
    if m is None:
        return text
    us = _time_us(f"{m[1]}:{m[2]}:{m[3]}")
    offset = (int(m[5]) * 3600 + int(m[6] or 0) * 60 + int(m[7] or 0)) * 1_000_000
    us = (us - offset if m[4] == "+" else us + offset) % (86_400 * 1_000_000)
    secs, micros = divmod(us, 1_000_000)
    frac = f".{micros:06d}".rstrip("0").rstrip(".")  # ISO_OFFSET_TIME: only the digits needed
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}{frac}Z"


_ISO_DURATION = re.compile(
    r"(-)?P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?"
)


def _interval(value: Any) -> Any:
    if value is None:
        return None
    m = _ISO_DURATION.fullmatch(str(value))
    if m is None:
        return None
    y, mo, w, d, h, mi = (int(g) if g else 0 for g in m.groups()[1:7])
    s = Decimal(m[8]) if m[8] else Decimal(0)
    months = y * 12 + mo
    days = w * 7 + d
    us = (
        round(months * _DAYS_PER_MONTH * 86_400 * 1_000_000)
        + days * 86_400 * 1_000_000
        + (h * 3600 + mi * 60) * 1_000_000
        + int(s * 1_000_000)
    )
    return -us if m[1] else us


def _json_text(value: Any) -> Any:
    """JSON text as PostgreSQL prints jsonb (``{"a": [1, 2]}``), which Debezium passes on."""
    if value is None:
        return None
    from .._event import dumps

    def render(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{dumps(str(k)).decode()}: {render(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(render(x) for x in v) + "]"
        return dumps(v).decode()

    return render(value)


def _int(value: Any, _typmod: int) -> Any:
    return int(value) if isinstance(value, str) else value  # a domain's text form


def _float(value: Any, _typmod: int) -> Any:
    if isinstance(value, str) and value not in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    return float(value) if isinstance(value, Decimal) else value


def _bool(value: Any, _typmod: int) -> Any:
    return value in ("t", "true") if isinstance(value, str) else value


_BY_OID: dict[int, Callable[[Any, int], Any]] = {
    21: _int,
    23: _int,
    20: _int,
    26: _int,
    700: _float,
    701: _float,
    16: _bool,
    1700: _numeric,
    790: lambda v, _t: _money(v),
    1082: lambda v, _t: _date(v),
    1083: _time,
    1114: _timestamp,
    1184: lambda v, _t: _timestamptz(v),
    1266: lambda v, _t: _timetz(v),
    1186: lambda v, _t: _interval(v),
    114: lambda v, _t: _json_text(v),
    3802: lambda v, _t: _json_text(v),
}


def _nested(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [_nested(v, fn) for v in value]
    return fn(value)


def convert(value: Any, col: Column) -> Any:
    """One column value of the default event in Debezium's JSON form."""
    if value is None:
        return None
    if col.elem_oid:
        elem = _BY_OID.get(col.elem_oid)
        if elem is None:
            return value
        return _nested(value, lambda v: elem(v, col.typmod))
    fn = _BY_OID.get(col.type_oid)
    return value if fn is None else fn(value, col.typmod)


# -- the schema part (``schemas: true``) -------------------------------------------------
def _field_schema(col: Column) -> dict[str, Any]:
    oid = col.elem_oid or col.type_oid
    s = _scalar_schema(oid, col.typmod)
    if col.elem_oid:
        s = {"type": "array", "items": {**s, "optional": True}}
    return {**s, "optional": col.optional, "field": col.name}


_INT_TYPES = {21: "int16", 23: "int32", 20: "int64", 26: "int64", 16: "boolean", 700: "float", 701: "double"}
_NAMED = {
    1082: ("int32", "io.debezium.time.Date"),
    1184: ("string", "io.debezium.time.ZonedTimestamp"),
    1266: ("string", "io.debezium.time.ZonedTime"),
    1186: ("int64", "io.debezium.time.MicroDuration"),
    114: ("string", "io.debezium.data.Json"),
    3802: ("string", "io.debezium.data.Json"),
    2950: ("string", "io.debezium.data.Uuid"),
}


def _scalar_schema(oid: int, typmod: int) -> dict[str, Any]:
    if oid in _INT_TYPES:
        return {"type": _INT_TYPES[oid]}
    if oid in _NAMED:
        t, name = _NAMED[oid]
        return {"type": t, "name": name, "version": 1}
    if oid == 17:
        return {"type": "bytes"}
    if oid == 1700 and typmod >= 4:
        scale, precision = (typmod - 4) & 0xFFFF, ((typmod - 4) >> 16) & 0xFFFF
        params = {"scale": str(scale), "connect.decimal.precision": str(precision)}
        return {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": params,
        }
    if oid == 1700:
        return {
            "type": "struct",
            "name": "io.debezium.data.VariableScaleDecimal",
            "version": 1,
            "doc": "Variable scaled decimal",
            "fields": [
                {"type": "int32", "optional": False, "field": "scale"},
                {"type": "bytes", "optional": False, "field": "value"},
            ],
        }
    if oid == 790:
        params = {"scale": "2"}
        return {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": params,
        }
    if oid in (1083, 1114):
        low = _precision(typmod) <= 3
        if oid == 1083:
            return {
                "type": "int32" if low else "int64",
                "name": f"io.debezium.time.{'Time' if low else 'MicroTime'}",
                "version": 1,
            }
        return {
            "type": "int64",
            "name": f"io.debezium.time.{'Timestamp' if low else 'MicroTimestamp'}",
            "version": 1,
        }
    return {"type": "string"}


def _row_schema(name: str, columns: list[Column]) -> dict[str, Any]:
    return {"type": "struct", "fields": [_field_schema(c) for c in columns], "optional": True, "name": name}


_SOURCE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.data.Enum",
            "version": 1,
            "parameters": {"allowed": "true,last,false,incremental"},
            "default": "false",
            "field": "snapshot",
        },
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
        {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"},
        {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"},
        {"type": "int64", "optional": True, "field": "xmin"},
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
}


def envelope_schema(prefix: str, schema: str, table: str, columns: list[Column]) -> dict[str, Any]:
    base = f"{prefix}.{schema}.{table}"
    row = _row_schema(f"{base}.Value", columns)
    return {
        "type": "struct",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {**_SOURCE_SCHEMA, "field": "source"},
            {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "id"},
                    {"type": "int64", "optional": False, "field": "total_order"},
                    {"type": "int64", "optional": False, "field": "data_collection_order"},
                ],
                "optional": True,
                "name": "event.block",
                "version": 1,
                "field": "transaction",
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{base}.Envelope",
        "version": 2,
    }


def key_schema(prefix: str, schema: str, table: str, columns: list[Column]) -> dict[str, Any]:
    fields = [{**_field_schema(c), "optional": False} for c in columns]
    return {"type": "struct", "fields": fields, "optional": False, "name": f"{prefix}.{schema}.{table}.Key"}


# -- the envelope ------------------------------------------------------------------------
def split_table(table: str) -> tuple[str, str]:
    """``orders`` -> (public, orders); ``sales.orders`` -> (sales, orders)."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def _row(values: Mapping[str, Any] | None, columns: list[Column], fill: Any) -> dict[str, Any] | None:
    if values is None:
        return None
    out: dict[str, Any] = {}
    for col in columns:
        if col.name in values:
            out[col.name] = convert(values[col.name], col)
        else:
            out[col.name] = fill
    return out


def _txid(transaction_id: str) -> int | None:
    tail = transaction_id.rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _commit_us(event: Mapping[str, Any]) -> int:
    ts = str(event.get("timestamp") or "")
    if not ts:
        return 0
    delta = datetime.fromisoformat(ts.replace("Z", "+00:00")) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class DebeziumRecord:
    key: dict[str, Any]
    value: dict[str, Any]
    key_schema: dict[str, Any]
    value_schema: dict[str, Any]


def envelope(
    event: Mapping[str, Any],
    columns: list[Column],
    *,
    lsn: int,
    prefix: str,
    version: str,
    now_us: int | None = None,
    snapshot: str | None = None,
) -> DebeziumRecord:
    """The Debezium record (key and value, each with its schema) of one default event."""
    op = OPS[str(event["operation"])]
    schema, table = split_table(str(event["table"]))
    new, old = event.get("value"), event.get("old_value")
    if op == "d":
        before = _row(old if old is not None else event.get("key") or {}, columns, None)
        after = None
    else:
        # an UPDATE without REPLICA IDENTITY FULL has no old row: before is null, as in Debezium
        before = _row(old, columns, None) if op == "u" and old is not None else None
        after = _row(new or {}, columns, UNAVAILABLE)
        if after is not None and old is not None:  # TOAST filled from the old row
            for col in columns:
                if after[col.name] == UNAVAILABLE and col.name in old:
                    after[col.name] = convert(old[col.name], col)
    commit_us = _commit_us(event)
    now = now_us if now_us is not None else time.time_ns() // 1000
    source = {
        "version": version,
        "connector": "postgresql",
        "name": prefix,
        "ts_ms": commit_us // 1000,
        "snapshot": snapshot or ("true" if op == "r" else "false"),
        "db": event.get("database", ""),
        "sequence": f'[null,"{lsn}"]',
        "ts_us": commit_us,
        "ts_ns": commit_us * 1000,
        "schema": schema,
        "table": table,
        "txId": _txid(str(event.get("transaction_id", ""))),
        "lsn": lsn,
        "xmin": None,
    }
    value = {
        "before": before,
        "after": after,
        "source": source,
        "transaction": None,
        "op": op,
        "ts_ms": now // 1000,
        "ts_us": now,
        "ts_ns": now * 1000,
    }
    pk = [c for c in columns if c.primary_key]
    row = after if after is not None else before or {}
    if pk:
        key = {c.name: row.get(c.name) for c in pk}
    else:  # no primary key: the replica identity columns, as the event has them
        names = list(event.get("key") or {})
        pk = [c for c in columns if c.name in names]
        key = {c.name: row.get(c.name) for c in pk}
    return DebeziumRecord(
        key=key,
        value=value,
        key_schema=key_schema(prefix, schema, table, pk),
        value_schema=envelope_schema(prefix, schema, table, columns),
    )


# -- column types -------------------------------------------------------------------------
class ColumnCatalog:
    """Column types per table, read from PostgreSQL's catalog and cached.

    ``lookup(table, names)`` reads the catalog again when ``names`` holds a column
    it does not know (a column added since), so types follow ``ALTER TABLE``.
    """

    def __init__(self, read_columns: Callable[[str], list[tuple[Any, ...]]]) -> None:
        # ``read_columns(table)``: the catalog rows of postgres.debezium_column_rows (I/O,
        # passed in by the service so this layer stays free of connections)
        self._read = read_columns
        self._cache: dict[str, list[Column]] = {}
        self._lock = threading.Lock()

    def fetch(self, table: str) -> list[Column]:
        rows = self._read(table)
        if not rows:
            raise SourceError(f"table {table} not found in the catalog", table=table)
        cols = [Column(r[0], int(r[1]), int(r[2]), bool(r[3]), int(r[4]), bool(r[5])) for r in rows]
        with self._lock:
            self._cache[table] = cols
        return cols

    def lookup(self, table: str, names: frozenset[str]) -> list[Column]:
        cols = self._cache.get(table)
        if cols is None or not names <= {c.name for c in cols}:
            cols = self.fetch(table)
        return cols

    def remember(self, table: str, columns: list[Column]) -> None:
        with self._lock:
            self._cache[table] = columns
