"""Avro binary bodies written straight from an event's decoded values.

``fastavro.schemaless_writer`` picks the branch of every union by validating the
value against each branch, the nested ``value`` record included, which costs
more than everything else an Avro event needs. The event schemas of
:mod:`._avro` have a fixed shape (an envelope of strings and longs; ``key``,
``value`` and ``old_value`` each ``["null", record]``; every column
``["null", <its type>]``, with a ``"string"`` branch for the few values a
logical type cannot hold), so the branch is known from the column's kind and
the converted value. :func:`compile_plan` turns a schema's fields into one
writer per column once; :meth:`Plan.body` then writes the same bytes fastavro
writes.

Anything a writer is not sure of (an integer outside its Avro range, a decimal
with more digits than its scale, a value of an unexpected type) raises
:class:`Unsupported`; the caller then encodes that event with fastavro, which
gives the same bytes or the same error as before. tests/test_avro_plan.py
compares both on every column kind.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_FLT_MAX = 3.4028234663852886e38
_pack_d = struct.Struct("<d").pack
_pack_f = struct.Struct("<f").pack

Writer = Callable[[bytearray, Any], None]


class Unsupported(Exception):
    """This value is left to fastavro (it decides the bytes or the error)."""


class _KindLike(Protocol):
    @property
    def avro(self) -> Any: ...

    @property
    def conv(self) -> str: ...


class _FieldLike(Protocol):
    @property
    def column(self) -> str: ...

    @property
    def kind(self) -> _KindLike: ...

    @property
    def key(self) -> bool: ...


def write_long(buf: bytearray, n: int) -> None:
    """Avro int/long: zig-zag, then a little-endian base-128 varint."""
    if -64 <= n < 64:  # one byte
        buf.append((n << 1) ^ (n >> 63))
        return
    if n < _LONG_MIN or n > _LONG_MAX:
        raise Unsupported("long out of range")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def write_string(buf: bytearray, s: str) -> None:
    b = s.encode()
    n = len(b)
    if n < 64:
        buf.append(n << 1)
    else:
        write_long(buf, n)
    buf += b


def _write_bytes(buf: bytearray, b: bytes) -> None:
    write_long(buf, len(b))
    buf += b


def _decimal_bytes(d: Decimal, precision: int, scale: int) -> bytes:
    """fastavro's ``prepare_bytes_decimal``: the unscaled value, big-endian two's complement."""
    sign, digits, exp = d.as_tuple()
    if not isinstance(exp, int) or len(digits) > precision or exp + scale < 0:
        raise Unsupported("decimal does not fit its scale")
    unscaled = 0
    for digit in digits:
        unscaled = unscaled * 10 + digit
    unscaled *= 10 ** (exp + scale)
    size = (unscaled.bit_length() + 8) // 8
    if sign:
        unscaled = -unscaled
    out: bytes = unscaled.to_bytes(size, byteorder="big", signed=True)
    return out


def _column_writer(kind: _KindLike, convert_value: Callable[[str, Any], Any]) -> Writer:
    """The writer of one column's ``["null", ...]`` union; the value is the event's
    (JSON-decoded) value, converted as ``_avro._convert_value`` converts it."""
    conv, avro = kind.conv, kind.avro

    if conv == "int":
        lo, hi = (_INT_MIN, _INT_MAX) if avro == "int" else (_LONG_MIN, _LONG_MAX)

        def w_int(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            if type(v) is not int:
                v = convert_value("int", v)
            if v < lo or v > hi:
                raise Unsupported("integer out of range")
            buf.append(2)
            write_long(buf, v)

        return w_int
    if conv == "float":
        single = avro == "float"

        def w_float(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            x = v if type(v) is float else convert_value("float", v)
            buf.append(2)
            if single:
                if abs(x) > _FLT_MAX and x not in (float("inf"), float("-inf")):
                    raise Unsupported("float out of range")
                buf += _pack_f(x)
            else:
                buf += _pack_d(x)

        return w_float
    if conv == "bool":

        def w_bool(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            b = v if type(v) is bool else convert_value("bool", v)
            buf.append(2)
            buf.append(1 if b else 0)

        return w_bool
    if conv in ("str", "text", "json", "numeric_str"):
        fast_str = conv in ("str", "text")

        def w_str(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            s = v if fast_str and type(v) is str else convert_value(conv, v)
            if type(s) is not str:
                raise Unsupported("not a string")
            buf.append(2)
            write_string(buf, s)

        return w_str
    if conv == "bytea":

        def w_bytes(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            b = convert_value("bytea", v)
            if type(b) is not bytes:
                raise Unsupported("not bytes")
            buf.append(2)
            _write_bytes(buf, b)

        return w_bytes
    if conv == "decimal":
        dec = avro[0]
        precision, scale = int(dec["precision"]), int(dec.get("scale", 0))

        def w_decimal(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            out = convert_value("decimal", v)
            if type(out) is str:  # NaN, infinities: the union's string branch
                buf.append(4)
                write_string(buf, out)
            elif type(out) is Decimal:
                buf.append(2)
                _write_bytes(buf, _decimal_bytes(out, precision, scale))
            else:
                raise Unsupported("not a decimal")

        return w_decimal
    if conv in ("timestamp", "date", "time"):
        lo, hi = (_INT_MIN, _INT_MAX) if conv == "date" else (_LONG_MIN, _LONG_MAX)
        has_string = conv != "time"

        def w_temporal(buf: bytearray, v: Any) -> None:
            if v is None:
                buf.append(0)
                return
            out = convert_value(conv, v)
            if type(out) is int and lo <= out <= hi:
                buf.append(2)
                write_long(buf, out)
            elif has_string and type(out) is str:  # infinity, BC: the string branch
                buf.append(4)
                write_string(buf, out)
            else:
                raise Unsupported("temporal value out of range")

        return w_temporal
    raise Unsupported(f"no writer for {conv}")


class Plan:
    """The writers of one event schema's ``key`` and ``value`` records."""

    __slots__ = ("key", "value")

    def __init__(self, key: list[tuple[str, Writer]], value: list[tuple[str, Writer]]) -> None:
        self.key = key
        self.value = value

    @staticmethod
    def _row(buf: bytearray, writers: list[tuple[str, Writer]], row: Mapping[str, Any] | None) -> None:
        if row is None:
            buf.append(0)
            return
        if not isinstance(row, Mapping):
            raise Unsupported("row is not an object")
        buf.append(2)
        get = row.get
        for column, write in writers:
            write(buf, get(column))

    def body(self, event: Mapping[str, Any], ts_us: int, table: str) -> bytes:
        """The Avro binary body of ``event`` (``ts_us``: its commit time, already parsed)."""
        buf = bytearray()
        write_string(buf, str(event.get("event_id", "")))
        write_long(buf, ts_us)
        write_long(buf, int(event.get("sequence", 0)))
        write_string(buf, str(event.get("operation", "")))
        write_string(buf, str(event.get("database", "")))
        write_string(buf, str(event.get("table", table)))
        key = event.get("key")
        self._row(buf, self.key, key if key else None)
        self._row(buf, self.value, event.get("value"))
        self._row(buf, self.value, event.get("old_value"))
        write_string(buf, str(event.get("transaction_id", "")))
        return bytes(buf)


def compile_plan(fields: Sequence[_FieldLike], convert_value: Callable[[str, Any], Any]) -> Plan | None:
    """A plan for these fields, or None when some column kind has no writer here."""
    try:
        value = [(f.column, _column_writer(f.kind, convert_value)) for f in fields]
    except Unsupported:
        return None
    key = [cw for f, cw in zip(fields, value, strict=True) if f.key]
    return Plan(key, value)
