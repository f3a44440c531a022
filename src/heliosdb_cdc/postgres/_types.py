"""PostgreSQL text-format values to faithful JSON-ready Python values.

The replication session runs with ``DateStyle=ISO``, ``TimeZone=UTC``,
``IntervalStyle=iso_8601`` and ``extra_float_digits=3`` so that the text the
server sends is already close to ISO 8601; converters only finish the job.
Arrays of built-in types are parsed by psycopg2's own typecasters.

Two forms per type: a *converter* (text -> Python value, for :class:`CdcEvent`)
and an *encoder* (text bytes -> the JSON of that value, for the capture hot
path, which writes events as JSON without building Python values first). For
every input both give the same JSON; ``tests/test_types.py`` checks it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import psycopg2.extensions

from .._event import JsonText, dumps

Converter = Callable[[str], Any]
Encoder = Callable[[bytes], bytes]


def _to_int(s: str) -> int:
    return int(s)


def _to_bool(s: str) -> bool:
    return s == "t"


def _to_float(s: str) -> float | str:
    f = float(s)
    if math.isfinite(f):
        return f
    # JSON has no NaN/Infinity: keep PostgreSQL's spelling as a string.
    return s


def _to_numeric(s: str) -> Decimal | str:
    if s in ("NaN", "Infinity", "-Infinity"):
        return s
    return Decimal(s)


def _to_json(s: str) -> JsonText:
    # PostgreSQL checked the text on input: it is JSON; kept as written (every digit, key
    # order, duplicate keys, any depth), parsed only where a Python value is needed
    return JsonText(s)


def _to_bytea(s: str) -> str:
    if s.startswith("\\x"):
        return base64.b64encode(bytes.fromhex(s[2:])).decode("ascii")
    # escape format (bytea_output=escape): let psycopg2 decode it
    raw = psycopg2.BINARY(s, None)
    return base64.b64encode(bytes(raw)).decode("ascii")


def _tz(s: str) -> str:
    # "+00" -> "+00:00", "+05:30" stays
    if len(s) >= 3 and s[-3] in "+-" and s[-2:].isdigit():
        return s + ":00"
    return s


def _astronomical(s: str) -> str:
    """``0044-03-15... BC`` -> ``-0043-03-15...``: ISO 8601 numbers years astronomically
    (1 BC is year 0000, 2 BC is -0001)."""
    body = s[:-3]
    dash = body.index("-")
    year = 1 - int(body[:dash])
    return (f"-{-year:04d}" if year < 0 else f"{year:04d}") + body[dash:]


def _to_date(s: str) -> str:
    return _astronomical(s) if s.endswith(" BC") else s


def _to_timestamp(s: str) -> str:
    if s in ("infinity", "-infinity"):
        return s
    if s.endswith(" BC"):
        s = _astronomical(s)
    dash = s.index("-", 1)  # the date's first dash (a BC year starts with one)
    return s[: dash + 6] + "T" + s[dash + 7 :]


def _to_timestamptz(s: str) -> str:
    if s[-3:] == "+00" and s[10:11] == " ":  # the session runs in UTC: the common case
        return s[:10] + "T" + s[11:-3] + "Z"
    if s in ("infinity", "-infinity"):
        return s
    s = _tz(_to_timestamp(s))
    if s.endswith("+00:00"):
        s = s[:-6] + "Z"
    return s


def _to_timetz(s: str) -> str:
    return _tz(s)


def _to_str(s: str) -> str:
    return s


_INT_OIDS = (20, 21, 23, 26, 28, 5069)
_FLOAT_OIDS = (700, 701)

_SCALAR: dict[int, Converter] = {
    16: _to_bool,
    17: _to_bytea,
    114: _to_json,
    3802: _to_json,
    1700: _to_numeric,
    1114: _to_timestamp,
    1184: _to_timestamptz,
    1266: _to_timetz,
    1082: _to_date,
    790: _to_str,  # money stays text: its format depends on lc_monetary
}
for _oid in _INT_OIDS:
    _SCALAR[_oid] = _to_int
for _oid in _FLOAT_OIDS:
    _SCALAR[_oid] = _to_float

# Array type oid -> element type oid, for the built-in types.
_ARRAYS: dict[int, int] = {
    1000: 16,
    1001: 17,
    1005: 21,
    1007: 23,
    1016: 20,
    1028: 26,
    1021: 700,
    1022: 701,
    1231: 1700,
    1009: 25,
    1015: 1043,
    1014: 1042,
    1002: 18,
    1003: 19,
    199: 114,
    3807: 3802,
    1115: 1114,
    1185: 1184,
    1182: 1082,
    1183: 1083,
    1270: 1266,
    1187: 1186,
    2951: 2950,
    1041: 869,
    651: 650,
    1040: 829,
    791: 790,  # money
}


_ARRAY_OF = {elem: arr for arr, elem in _ARRAYS.items()}
FIRST_USER_OID = 16384  # PostgreSQL's FirstNormalObjectId: types below it are built in


def array_of(elem_oid: int) -> int:
    """The built-in array type whose elements convert like ``elem_oid``; ``text[]`` (elements
    as strings) for the others: enums, composites, ranges. ``box[]`` (``;`` between elements)
    has no JSON array form and stays text."""
    if elem_oid == 603:
        return 1020
    return _ARRAY_OF.get(elem_oid, 1009)


def _map_nested(value: Any, fn: Converter) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


def _array_converter(elem_oid: int) -> Converter:
    elem = _SCALAR.get(elem_oid, _to_str)
    parse_text = psycopg2.extensions.string_types[1009]  # text[] parser

    def convert(s: str) -> Any:
        return _map_nested(parse_text(s, None), elem)

    return convert


_CACHE: dict[int, Converter] = {}


def converter_for(type_oid: int) -> Converter:
    """The converter of one column type; unknown types (enums, domains...) stay text."""
    conv = _CACHE.get(type_oid)
    if conv is None:
        if type_oid in _SCALAR:
            conv = _SCALAR[type_oid]
        elif type_oid in _ARRAYS:
            conv = _array_converter(_ARRAYS[type_oid])
        else:
            conv = _to_str
        _CACHE[type_oid] = conv
    return conv


# -- encoders: PostgreSQL text (bytes) -> JSON (bytes) -------------------------------
_dumps = orjson.dumps
_NUMERIC_SPECIAL = {b"NaN": b'"NaN"', b"Infinity": b'"Infinity"', b"-Infinity": b'"-Infinity"'}


def _enc_verbatim(b: bytes) -> bytes:
    return b  # integers: PostgreSQL's text is already the JSON number


def _enc_numeric(b: bytes) -> bytes:
    # finite numerics print in positional notation with every digit: already JSON
    return _NUMERIC_SPECIAL.get(b, b)


def _enc_bool(b: bytes) -> bytes:
    return b"true" if b == b"t" else b"false"


def _enc_str(b: bytes) -> bytes:
    return _dumps(b.decode())


def _enc_float(b: bytes) -> bytes:
    f = float(b)
    return _dumps(f) if math.isfinite(f) else _dumps(b.decode())


def _enc_date(b: bytes) -> bytes:
    if b[-3:] == b" BC":
        return _dumps(_astronomical(b.decode()))
    return b'"%s"' % b  # digits and dashes, or "infinity": nothing to escape


def _enc_timestamptz(b: bytes) -> bytes:
    if b[-3:] == b"+00" and b[10:11] == b" ":  # UTC, the session's zone: no escaping needed
        return b'"%sT%sZ"' % (b[:10], b[11:-3])
    return _dumps(_to_timestamptz(b.decode()))


def _generic_encoder(conv: Converter) -> Encoder:
    def encode(b: bytes) -> bytes:
        return dumps(conv(b.decode()))  # Decimal, bytes and > 64-bit integers too

    return encode


_ENCODERS: dict[Converter, Encoder] = {
    _to_int: _enc_verbatim,
    _to_numeric: _enc_numeric,
    _to_bool: _enc_bool,
    _to_str: _enc_str,
    _to_float: _enc_float,
    _to_json: _enc_verbatim,
    _to_timestamptz: _enc_timestamptz,
    _to_date: _enc_date,
}
_ENC_CACHE: dict[int, Encoder] = {}


def encoder_for(type_oid: int) -> Encoder:
    """The encoder of one column type: same JSON as ``converter_for`` then encoding."""
    enc = _ENC_CACHE.get(type_oid)
    if enc is None:
        conv = converter_for(type_oid)
        enc = _ENCODERS.get(conv) or _generic_encoder(conv)
        _ENC_CACHE[type_oid] = enc
    return enc


def is_numeric_type(type_oid: int) -> bool:
    return type_oid in _INT_OIDS or type_oid in _FLOAT_OIDS or type_oid == 1700
