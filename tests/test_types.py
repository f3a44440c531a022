"""converter_for: PostgreSQL text output to JSON-ready Python values."""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_cdc._event import dumps
from heliosdb_cdc.postgres._types import converter_for, encoder_for, is_numeric_type

INT2, INT4, INT8, OID = 21, 23, 20, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
BOOL, BYTEA, TEXT, VARCHAR = 16, 17, 25, 1043
JSON, JSONB = 114, 3802
TIMESTAMP, TIMESTAMPTZ, TIMETZ, UUID = 1114, 1184, 1266, 2950
INT4_ARRAY, INT8_ARRAY, TEXT_ARRAY, BOOL_ARRAY = 1007, 1016, 1009, 1000
NUMERIC_ARRAY, FLOAT8_ARRAY, JSONB_ARRAY, TSTZ_ARRAY, BYTEA_ARRAY = 1231, 1022, 3807, 1185, 1001


def conv(oid: int, text: str) -> Any:
    return converter_for(oid)(text)


@pytest.mark.parametrize("oid", [INT2, INT4, INT8, OID])
def test_integers(oid: int) -> None:
    assert conv(oid, "0") == 0
    assert conv(oid, "-32768") == -32768
    assert conv(oid, "9223372036854775807") == 9223372036854775807
    assert type(conv(oid, "5")) is int


def test_numeric_keeps_every_digit() -> None:
    v = conv(NUMERIC, "12345678901234567890.123456789012345678901")
    assert isinstance(v, Decimal)
    assert str(v) == "12345678901234567890.123456789012345678901"
    assert str(conv(NUMERIC, "19.90")) == "19.90"  # trailing zero kept
    assert conv(NUMERIC, "-0.0001") == Decimal("-0.0001")


@pytest.mark.parametrize("special", ["NaN", "Infinity", "-Infinity"])
def test_numeric_and_float_specials_stay_strings(special: str) -> None:
    assert conv(NUMERIC, special) == special
    assert conv(FLOAT8, special) == special
    assert conv(FLOAT4, special) == special
    # they can be encoded as JSON (orjson would turn a float NaN into null)
    assert orjson.loads(orjson.dumps({"v": conv(FLOAT8, special)})) == {"v": special}


def test_floats() -> None:
    assert conv(FLOAT8, "1.5") == 1.5
    assert conv(FLOAT8, "-1e-300") == -1e-300
    assert conv(FLOAT4, "3.4028235e+38") == pytest.approx(3.4028235e38)
    assert isinstance(conv(FLOAT8, "2"), float)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_repr_round_trip(x: float) -> None:
    assert conv(FLOAT8, repr(x)) == x


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_numeric_round_trip(d: Decimal) -> None:
    text = format(d, "f")
    got = conv(NUMERIC, text)
    assert got == d
    # exact: same digits and exponent as the text PostgreSQL sent (19.90 stays 19.90)
    assert got.as_tuple() == Decimal(text).as_tuple()
    assert format(got, "f") == text


def test_bool() -> None:
    assert conv(BOOL, "t") is True
    assert conv(BOOL, "f") is False


def test_json_and_jsonb_are_kept_as_written() -> None:
    doc = '{"a": [1, 2.5, null, "x"], "b": {"c": true}}'
    for oid in (JSON, JSONB):
        assert dumps(conv(oid, doc)) == doc.encode()  # embedded verbatim
        assert encoder_for(oid)(doc.encode()) == doc.encode()
        assert conv(oid, doc).parse() == {"a": [1, Decimal("2.5"), None, "x"], "b": {"c": True}}
    assert conv(JSONB, '"just a string"').parse() == "just a string"
    assert conv(JSONB, "42").parse() == 42
    # every digit, duplicate keys and key order of json as PostgreSQL stored them
    dup = (
        '{"b": 1, "a": 3.14159265358979323846264338327950288, "b": 2, "big": 123456789012345678901234567890}'
    )
    assert encoder_for(JSON)(dup.encode()) == dup.encode()
    assert conv(JSON, dup).parse()["a"] == Decimal("3.14159265358979323846264338327950288")
    assert orjson.loads(dumps({"v": conv(JSON, "[1e-400]")})) is not None
    assert dumps({"v": conv(JSON, "[1e-400]")}) == b'{"v":[1e-400]}'
    # no depth limit on the way through
    deep = "[" * 5000 + "]" * 5000
    assert encoder_for(JSONB)(deep.encode()) == deep.encode()


def test_bytea_hex_to_base64() -> None:
    assert conv(BYTEA, "\\x") == ""
    assert conv(BYTEA, "\\xdeadbeef") == base64.b64encode(b"\xde\xad\xbe\xef").decode()
    assert conv(BYTEA, "\\x00FF") == "AP8="


def test_bytea_escape_format() -> None:
    assert base64.b64decode(conv(BYTEA, "abc\\000\\377")) == b"abc\x00\xff"


@given(st.binary(max_size=100))
def test_bytea_round_trip(raw: bytes) -> None:
    assert base64.b64decode(conv(BYTEA, "\\x" + raw.hex())) == raw


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-01-04 12:00:00+00", "2026-01-04T12:00:00Z"),
        ("2026-01-04 12:00:00.123456+00", "2026-01-04T12:00:00.123456Z"),
        ("2026-01-04 12:00:00+05:30", "2026-01-04T12:00:00+05:30"),
        ("2026-01-04 12:00:00-08", "2026-01-04T12:00:00-08:00"),
        ("2026-01-04 12:00:00+00:00", "2026-01-04T12:00:00Z"),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
    ],
)
def test_timestamptz(text: str, want: str) -> None:
    assert conv(TIMESTAMPTZ, text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-01-04 12:00:00", "2026-01-04T12:00:00"),
        ("2026-01-04 12:00:00.5", "2026-01-04T12:00:00.5"),
        ("infinity", "infinity"),
    ],
)
def test_timestamp(text: str, want: str) -> None:
    assert conv(TIMESTAMP, text) == want


def test_timetz() -> None:
    assert conv(TIMETZ, "12:00:00+00") == "12:00:00+00:00"
    assert conv(TIMETZ, "12:00:00+05:30") == "12:00:00+05:30"


@pytest.mark.parametrize("oid", [TEXT, VARCHAR, UUID, 790, 999_999])
def test_text_and_unknown_types_stay_text(oid: int) -> None:
    assert conv(oid, "a b, c") == "a b, c"
    assert converter_for(oid) is converter_for(oid)  # cached


def test_is_numeric_type() -> None:
    assert all(is_numeric_type(o) for o in (INT2, INT4, INT8, FLOAT4, FLOAT8, NUMERIC))
    assert not is_numeric_type(TEXT)
    assert not is_numeric_type(INT4_ARRAY)


# -- arrays ---------------------------------------------------------------------------


def test_int_arrays() -> None:
    assert conv(INT4_ARRAY, "{}") == []
    assert conv(INT4_ARRAY, "{1,2,3}") == [1, 2, 3]
    assert conv(INT8_ARRAY, "{-9223372036854775808}") == [-9223372036854775808]
    assert conv(INT4_ARRAY, "{{1,2},{3,NULL}}") == [[1, 2], [3, None]]
    assert conv(INT4_ARRAY, "[0:1]={1,2}") == [1, 2]


def test_text_array_quoting() -> None:
    literal = r'{plain,"with,comma","with \"quote\"","back\\slash",NULL,"NULL","",'
    literal += r'"{braces}"," spaced "}'
    assert conv(TEXT_ARRAY, literal) == [
        "plain",
        "with,comma",
        'with "quote"',
        "back\\slash",
        None,
        "NULL",
        "",
        "{braces}",
        " spaced ",
    ]


def test_typed_arrays() -> None:
    assert conv(BOOL_ARRAY, "{t,f,NULL}") == [True, False, None]
    got = conv(NUMERIC_ARRAY, "{1.10,NaN,-3}")
    assert got == [Decimal("1.10"), "NaN", Decimal("-3")]
    assert str(got[0]) == "1.10"
    assert conv(FLOAT8_ARRAY, "{1.5,Infinity,NaN}") == [1.5, "Infinity", "NaN"]
    assert dumps(conv(JSONB_ARRAY, r'{"{\"a\": 1}","[1, 2]"}')) == b'[{"a": 1},[1, 2]]'
    assert conv(TSTZ_ARRAY, '{"2026-01-04 12:00:00+00","2026-01-04 12:00:00+05:30",NULL}') == [
        "2026-01-04T12:00:00Z",
        "2026-01-04T12:00:00+05:30",
        None,
    ]
    assert conv(BYTEA_ARRAY, r'{"\\x0102",NULL}') == ["AQI=", None]


def _quote(s: str) -> str:
    """An element as PostgreSQL's array_out writes it."""
    needs = s == "" or s.upper() == "NULL" or any(c in s for c in '{},"\\') or any(c.isspace() for c in s)
    if not needs:
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: Any, elem: Any) -> str:
    if isinstance(value, list):
        return "{" + ",".join(_literal(v, elem) for v in value) + "}"
    if value is None:
        return "NULL"
    return elem(value)


ints = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
texts = st.one_of(
    st.none(), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
)


def _rectangular(elem: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """1-d lists, or 2-d lists whose rows have the same non-zero length (as PostgreSQL requires)."""
    two_d = st.integers(1, 4).flatmap(
        lambda n: st.lists(st.lists(elem, min_size=n, max_size=n), min_size=1, max_size=4)
    )
    return st.one_of(st.lists(elem, max_size=8), two_d)


@given(_rectangular(ints))
@settings(max_examples=150)
def test_int_array_round_trip(value: list[Any]) -> None:
    assert conv(INT8_ARRAY, _literal(value, str)) == value


@given(_rectangular(texts))
@settings(max_examples=200)
def test_text_array_round_trip(value: list[Any]) -> None:
    assert conv(TEXT_ARRAY, _literal(value, _quote)) == value


def test_array_values_are_json_encodable() -> None:
    v = conv(NUMERIC_ARRAY, "{1.5,NaN}")
    from heliosdb_cdc._event import dumps

    assert dumps(v) == b'[1.5,"NaN"]'
    assert math.isclose(float(orjson.loads(dumps(v))[0]), 1.5)


# every type's encoder gives the JSON of its converter's value (the capture hot path
# encodes INSERT values straight from the message bytes)
ENCODER_CASES = [
    (23, st.integers(-(2**31), 2**31 - 1).map(str)),
    (20, st.integers(-(2**63), 2**63 - 1).map(str)),
    (1700, st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f"))),
    (1700, st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0.000100"])),
    (16, st.sampled_from(["t", "f"])),
    (701, st.floats().map(repr)),
    (700, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e+20", "-1.5e-05"])),
    (25, st.text(st.characters(blacklist_categories=("Cs",)))),
    (3802, st.sampled_from(['{"a": [1, 2.5, null]}', "[]", '"x"', '{"n": 123456789012345678901234567890}'])),
    (1184, st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00")),
    (1184, st.sampled_from(["2026-01-04 12:00:00+05:30", "infinity", "2026-01-04 12:00:00-08"])),
    (17, st.binary().map(lambda r: "\\x" + r.hex())),
    (1007, st.lists(st.one_of(st.none(), st.integers())).map(
        lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}")),
    (1082, st.dates().map(str)),
]  # fmt: skip


@pytest.mark.parametrize(("oid", "values"), ENCODER_CASES)
@settings(max_examples=60)
@given(data=st.data())
def test_encoder_matches_converter(oid: int, values: Any, data: Any) -> None:
    text = data.draw(values)
    assert encoder_for(oid)(text.encode()) == dumps(converter_for(oid)(text))
