"""The compiled codec (heliosdb_cdc._native) gives the pure-Python decoder's bytes.

Both paths are fed the same pgoutput messages (tests.pgoutput_builders), with a
column of every type of docs/events.md, and must give identical records: key,
event JSON, sequence, index. Malformed input must fail the same way on both.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_cdc._record import Record
from heliosdb_cdc.postgres import _codec
from heliosdb_cdc.postgres._decoder import ChangeDecoder
from heliosdb_cdc.postgres._decoding import decode_batch
from heliosdb_cdc.postgres._types import encoder_for
from tests import pgoutput_builders as b
from tests.pgoutput_builders import UNCHANGED

native = _codec.load_native()  # not built: a failure here, never a skip

TS = int(datetime(2026, 1, 4, 12, 0, 0, 250000, tzinfo=UTC).timestamp() * 1_000_000)
REL = 16500

# -- PostgreSQL text output per type (session: DateStyle ISO, TimeZone UTC, IntervalStyle iso_8601)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
pg_int = st.integers(-(2**63), 2**63 - 1).map(str)
pg_float = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.9g}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e+20", "1.5e-05", "-0", "1e400", "0.1", "100"]),
)
pg_numeric = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "0.000000001", "12345678901234567890.123456789"]),
)
pg_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
).map(lambda v: json.dumps(v, separators=(", ", ": ")))
dt = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
pg_ts = st.one_of(
    dt.map(
        lambda d: (
            d.strftime("%Y-%m-%d %H:%M:%S") + (f".{d.microsecond:06d}".rstrip("0") if d.microsecond else "")
        )
    ),
    st.sampled_from(["infinity", "-infinity", "0044-03-15 12:00:00 BC"]),
)
pg_tstz = st.one_of(
    pg_ts.map(lambda s: s if "infinity" in s else s + "+00"),
    st.sampled_from(["2026-01-04 12:00:00+05:30", "2026-01-04 12:00:00-08", "0044-03-15 12:00:00+00 BC"]),
)
pg_bytea = st.one_of(
    st.binary(max_size=10).map(lambda r: "\\x" + r.hex()),
    st.binary(max_size=4).map(lambda r: "\\X" + r.hex().upper()),
    st.sampled_from(["abc\\\\def", "\\001\\002"]),  # escape format (bytea_output=escape)
)


def pg_array(elem: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def lit(s: str | None) -> str:
        if s is None:
            return "NULL"
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    flat = st.lists(st.one_of(st.none(), elem), max_size=3).map(lambda xs: "{" + ",".join(map(lit, xs)) + "}")
    return st.one_of(flat, st.lists(flat, min_size=1, max_size=2).map(lambda xs: "{" + ",".join(xs) + "}"))


# (column name, type oid, text values): every row of docs/events.md's type table
TYPES: list[tuple[str, int, st.SearchStrategy[str]]] = [
    ("i2", 21, st.integers(-32768, 32767).map(str)),
    ("i4", 23, st.integers(-(2**31), 2**31 - 1).map(str)),
    ("i8", 20, pg_int),
    ("oid", 26, st.integers(0, 2**32 - 1).map(str)),
    ("num", 1700, pg_numeric),
    ("f4", 700, pg_float),
    ("f8", 701, pg_float),
    ("ok", 16, st.sampled_from(["t", "f"])),
    ("txt", 25, text),
    ("vc", 1043, text),
    ("ch", 1042, text),
    ("uid", 2950, st.uuids().map(str)),
    ("mood", 91234, st.sampled_from(["happy", "sad", "ok"])),  # an enum: its own oid
    ("cash", 790, st.sampled_from(["$1,234.50", "-$0.99", "€12"])),
    ("day", 1082, st.dates().map(str)),
    ("tm", 1083, st.times().map(str)),
    ("ts", 1114, pg_ts),
    ("tstz", 1184, pg_tstz),
    ("ttz", 1266, st.sampled_from(["12:00:00+02", "23:59:59.5-05:30", "00:00:00+00"])),
    ("ival", 1186, st.sampled_from(["P1DT2H", "PT0S", "P-1Y-2M3DT-4H-5M-6.5S"])),
    ("js", 114, pg_json),
    ("jsb", 3802, pg_json),
    ("raw", 17, pg_bytea),
    ("a_i4", 1007, pg_array(st.integers(-5, 5).map(str))),
    ("a_txt", 1009, pg_array(text)),
    ("a_num", 1231, pg_array(pg_numeric)),
    ("a_f8", 1022, pg_array(pg_float.filter(lambda s: s != "1e400"))),
    ("a_b", 1000, pg_array(st.sampled_from(["t", "f"]))),
    ("a_jsb", 3807, pg_array(pg_json)),
    ("a_tstz", 1185, pg_array(pg_tstz.filter(lambda s: "BC" not in s))),
    ("a_raw", 1001, pg_array(st.binary(max_size=4).map(lambda r: "\\x" + r.hex()))),
    ('we"ird ✓', 25, text),  # a name that needs escaping
]
NCOLS = len(TYPES)


@st.composite
def workload(draw: st.DrawFn) -> tuple[list[tuple[str, int, int, bool]], str, list[bytes]]:
    """A relation with every type (random key columns, identity) and changes to it."""
    ident = draw(st.sampled_from(["d", "f"]))
    keys = draw(st.lists(st.booleans(), min_size=NCOLS, max_size=NCOLS))
    cols = [(name, oid, -1, ident == "f" or k) for (name, oid, _), k in zip(TYPES, keys, strict=True)]
    key_idx = [i for i, c in enumerate(cols) if c[3]]

    def row(toast: bool = False) -> list[object]:
        out: list[object] = []
        for i, (_, _, values) in enumerate(TYPES):
            choice = draw(st.integers(0, 9))
            if choice == 0:
                out.append(None)
            elif choice == 1 and toast and i not in key_idx:
                out.append(UNCHANGED)
            else:
                out.append(draw(values))
        return out

    msgs: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from("IUUDD"))
        if op == "I":
            msgs.append(b.insert(REL, row()))
        elif op == "U":
            old_kind = draw(st.sampled_from([None, "K", "O"]))
            old: list[object] | None = None
            if old_kind == "K":
                old = [v if i in key_idx else None for i, v in enumerate(row())]
            elif old_kind == "O":
                old = row(toast=draw(st.booleans()))
            msgs.append(b.update(REL, row(toast=True), old, old_kind or "O"))
        else:
            kind = draw(st.sampled_from(["K", "O"]))
            old = row() if kind == "O" else [v if i in key_idx else None for i, v in enumerate(row())]
            msgs.append(b.delete(REL, old, kind))
    return cols, ident, msgs


def feed_all(dec: ChangeDecoder, payloads: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for p in payloads:
        try:
            out.extend(dec.feed_records(p))
        except Exception as exc:  # the same error on both paths
            out.append((type(exc).__name__, str(exc)))
    return out


def session(cols: list[tuple[str, int, int, bool]], ident: str, msgs: list[bytes]) -> list[bytes]:
    return [
        b.relation(REL, "shop", "every type", cols, ident),
        b.begin(0x1_0000_0010, TS, 4242),
        *msgs,
        b.commit(0x1_0000_0010, 0x1_0000_0018, TS),
    ]


@given(workload())
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
def test_native_and_python_give_the_same_records(case: tuple[list[Any], str, list[bytes]]) -> None:
    payloads = session(*case)
    fast = ChangeDecoder('db "x"', next_sequence=77, native=True)
    pure = ChangeDecoder('db "x"', next_sequence=77, native=False)
    got, want = feed_all(fast, payloads), feed_all(pure, payloads)
    assert got == want
    assert fast.next_sequence == pure.next_sequence and fast.index == pure.index
    # and the same as the general path (CdcEvent, then JSON)
    general = ChangeDecoder('db "x"', next_sequence=77, native=False)
    events = [general._record(e) for p in payloads for e in general.feed(p) if not hasattr(e, "end_lsn")]
    assert [r for r in got if isinstance(r, Record)] == events


def _decoder_in_txn(native: bool, cols: list[tuple[str, int, int, bool]]) -> ChangeDecoder:
    dec = ChangeDecoder("db", native=native)
    for p in session(cols, "d", [])[:2]:
        dec.feed_records(p)
    return dec


def test_native_path_does_the_work() -> None:
    """The equivalence above would hold if everything fell back to Python: check it does not."""
    cols = [(name, oid, -1, i == 1) for i, (name, oid, _) in enumerate(TYPES)]
    dec = _decoder_in_txn(True, cols)
    assert dec.relations[REL].native is not None

    def python_path(*_: object) -> Any:
        raise AssertionError("the Python path ran")

    dec._insert_record = python_path  # type: ignore[method-assign]
    dec._change = python_path  # type: ignore[method-assign]
    row = ["1", "2", "3", "4", "5.5", "1.5", "2.5e-07", "t", "a\nb", "c", "d", "u", "happy", "$1.00",
           "2026-01-04", "12:00:00", "2026-01-04 12:00:00.5", "2026-01-04 12:00:00.5+00", "12:00:00+02",
           "P1D", '{"a": 1}', '{"b": [1, 2]}', "\\x0102ff", "{1,2}", '{"x y",z}', "{1.5}", "{1e+16}",
           "{t}", '{"{\\"a\\": 1}"}', '{"2026-01-04 12:00:00+00"}', '{"\\\\x01"}', "w"]  # fmt: skip
    (ins,) = dec.feed_records(b.insert(REL, row))
    (upd,) = dec.feed_records(b.update(REL, row[:2] + [UNCHANGED] * (NCOLS - 2), row, "O"))
    (dele,) = dec.feed_records(b.delete(REL, [None, "2"] + [None] * (NCOLS - 2), "K"))
    assert isinstance(ins, Record) and isinstance(upd, Record) and isinstance(dele, Record)
    ev = orjson.loads(ins.body)
    assert ev["key"] == {"i4": 2} and ins.key == b'{"i4":2}'
    assert ev["value"]["f8"] == 2.5e-07 and ev["value"]["tstz"] == "2026-01-04T12:00:00.5Z"
    assert ev["value"]["js"] == {"a": 1} and ev["value"]["raw"] == "AQL/"
    # unchanged TOASTed columns come from the full old row, after the others
    assert list(orjson.loads(upd.body)["value"])[:3] == ["i2", "i4", "i8"]
    assert orjson.loads(upd.body)["value"] == ev["value"]
    assert orjson.loads(dele.body)["old_value"] == {"i4": 2}
    assert [r.op for r in (ins, upd, dele)] == [1, 2, 3]


def test_malformed_messages_fail_the_same_way_on_both_paths() -> None:
    cols = [(name, oid, -1, i == 0) for i, (name, oid, _) in enumerate(TYPES)]
    row: list[object] = ["1"] + [None] * (NCOLS - 1)
    bad_utf8 = b"I" + struct.pack("!I", REL) + b"N" + struct.pack("!h", NCOLS) + b"t" + struct.pack("!i", 2)
    bad_utf8 += b"1\xff" + b"n" * (NCOLS - 1)
    cases = [
        b.insert(REL, row)[:-3],  # truncated
        b.insert(REL, row[:-1]),  # a column short
        b.insert(REL, [*row[:8], "\xff\u2028", *row[9:]]),
        b.insert(REL, ["1", "2", "3", "4", "x", *row[5:]]),  # numeric text passes as is (reference)
        b.insert(REL, ["1", "2", "3", "4", "5", "1_0", *row[6:]]),  # float Python accepts
        b.insert(REL, ["1", "2", "3", "4", "5", "1e", *row[6:]]),  # float nobody accepts
        b.insert(REL, [*row[:22], "\\x0", *row[23:]]),  # odd hex
        b"U" + b.update(REL, row, row, "O")[1:5] + b"Q" + b.update(REL, row, row, "O")[6:],
        b"D" + b.delete(REL, row, "K")[1:5] + b"N" + b.delete(REL, row, "K")[6:],
        b.update(REL, row)[:6],
        b"I" + struct.pack("!I", REL),
        bad_utf8,
        b.insert(REL, [b"\x01", *row[1:]]),  # binary format
    ]
    for payload in cases:
        got = feed_all(_decoder_in_txn(True, cols), [payload])
        want = feed_all(_decoder_in_txn(False, cols), [payload])
        assert got == want, payload


# -- the encoders one by one, against their Python reference ---------------------------
def py_encode(oid: int, raw: bytes) -> Any:
    try:
        return encoder_for(oid)(raw)
    except Exception as exc:
        return type(exc)


def rust_encode(oid: int, raw: bytes) -> Any:
    out = native.encode_value(_codec.kind_for(native, oid), raw)
    return py_encode(oid, raw) if out is None else out  # None: Python decides


@given(st.floats(allow_nan=False) | st.floats(width=32, allow_nan=False))
@settings(max_examples=2000)
def test_float_encoding_is_orjsons(x: float) -> None:
    for raw in (repr(x).encode(), f"{x:.17g}".encode(), f"{x:e}".encode()):
        assert rust_encode(701, raw) == py_encode(701, raw)
    if math.isfinite(x):
        assert native.encode_value(native.KIND_FLOAT, repr(x).encode()) == orjson.dumps(x)


@given(st.text(st.sampled_from("0123456789.eE+-_ naNifty"), max_size=8))
@settings(max_examples=1000)
def test_float_text_accepted_like_python(s: str) -> None:
    assert rust_encode(701, s.encode()) == py_encode(701, s.encode())


@given(st.text(st.characters(blacklist_categories=("Cs",))))
@settings(max_examples=1000)
def test_strings_escape_like_orjson(s: str) -> None:
    assert native.json_string(s) == orjson.dumps(s)


@given(st.binary(max_size=40), st.sampled_from([16, 17, 20, 25, 701, 1114, 1184, 1700]))
@settings(max_examples=1000)
def test_any_bytes_encode_like_python_or_go_to_python(raw: bytes, oid: int) -> None:
    for value in (raw, b"\\x" + raw.hex().encode(), raw + b"+00"):
        assert rust_encode(oid, value) == py_encode(oid, value)


def test_kinds_follow_the_python_encoders() -> None:
    k = native
    assert [_codec.kind_for(k, oid) for oid in (20, 1700, 16, 25, 2950, 701, 1184, 1114, 17)] == [
        k.KIND_VERBATIM, k.KIND_NUMERIC, k.KIND_BOOL, k.KIND_STR, k.KIND_STR, k.KIND_FLOAT,
        k.KIND_TIMESTAMPTZ, k.KIND_TIMESTAMP, k.KIND_BYTEA,
    ]  # fmt: skip
    # json and jsonb are PostgreSQL's text as it is (every digit, key order, duplicates)
    assert {_codec.kind_for(k, oid) for oid in (114, 3802)} == {k.KIND_VERBATIM}
    # types without a compiled encoder call their Python one: timetz, arrays of json and others
    assert {_codec.kind_for(k, oid) for oid in (1266, 199, 3807, 1270, 1185)} == {k.KIND_PYTHON}


def test_codec_selection_by_environment() -> None:
    code = "from heliosdb_cdc.postgres import _codec; print(_codec.codec_name(), _codec.codec_description())"
    env = {**os.environ, "HELIOSDB_CDC_PURE_PYTHON": "1"}
    pure = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert pure.stdout.startswith("pure-python pure-python (HELIOSDB_CDC_PURE_PYTHON is set)")
    env.pop("HELIOSDB_CDC_PURE_PYTHON")
    default = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert default.stdout.split()[0] == "native"
    dec = ChangeDecoder("db", native=False)
    dec.feed(b.relation(REL, "public", "t", [("id", 23, -1, True)]))
    assert dec.relations[REL].native is None


@given(workload(), st.lists(st.integers(1, 7), min_size=1, max_size=6), st.booleans())
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
def test_batches_through_the_compiled_runs_match(
    case: tuple[list[Any], str, list[bytes]], cuts: list[int], plain: bool
) -> None:
    """decode_batch hands runs of row changes to the compiled codec in one call; a binary
    column (handed back) and transaction boundaries split the runs."""
    cols, ident, msgs = case
    binary = b.insert(REL, [b"\x00\x01", *[None] * (NCOLS - 1)])
    payloads = session(cols, ident, [*msgs, binary, *msgs])
    payloads += [b.begin(0x2_0000_0010, TS, 4243), *msgs, b.commit(0x2_0000_0010, 0x2_0000_0018, TS)]
    batches, pos = [], 0
    for c in [*cuts, len(payloads)]:
        batches.append(payloads[pos : pos + c])
        pos += c
    fast = ChangeDecoder("db", native=True)
    pure = ChangeDecoder("db", native=False)
    for batch in batches:
        got, want = decode_batch(fast, batch, plain), decode_batch(pure, batch, plain)
        assert got.events == want.events
        assert [type(e) for e in got.events] == [type(e) for e in want.events]
        assert (got.commits, got.order, got.in_transaction) == (want.commits, want.order, want.in_transaction)
    assert fast.next_sequence == pure.next_sequence


def test_a_bad_message_in_a_run_is_dead_lettered_as_on_the_python_path() -> None:
    """A row that cannot become an event stops neither path: both dead-letter it (raw bytes
    kept) and go on, with the same records, ids and sequences around it."""
    cols = [(name, oid, -1, i == 0) for i, (name, oid, _) in enumerate(TYPES)]
    good = b.insert(REL, ["1", *[None] * (NCOLS - 1)])
    bad = b.insert(REL, ["1", "2", "3", "4", "5", "1e", *[None] * (NCOLS - 6)])  # float nobody accepts
    results = []
    for native_ in (True, False):
        dec = _decoder_in_txn(native_, cols)
        batch = decode_batch(dec, [good, good, bad, good])
        dead = [(u.event_id, u.table, u.operation, u.payload) for u in batch.undecodable]
        results.append((batch.events, dead, dec.next_sequence))
    assert results[0] == results[1]
    events, dead, _ = results[0]
    assert len(events) == 3 and len(dead) == 1 and dead[0][3] == bad


def test_bc_values_and_dates_leave_the_spelling_to_python() -> None:
    k = native
    assert k.encode_value(k.KIND_TIMESTAMP, b"0044-03-15 12:00:00 BC") is None
    assert k.encode_value(k.KIND_TIMESTAMP, b"10000-01-01 00:00:00") == b'"10000-01-01T00:00:00"'
    assert k.encode_value(k.KIND_TIMESTAMPTZ, b"0044-03-15 12:00:00+00 BC") is None
    # a date encoder (`_types._enc_date`, when it exists) quotes the text; BC goes to Python
    assert k.encode_value(k.KIND_DATE, b"2026-01-04") == b'"2026-01-04"'
    assert k.encode_value(k.KIND_DATE, b"-infinity") == b'"-infinity"'
    assert k.encode_value(k.KIND_DATE, b"0044-03-15 BC") is None


def test_a_module_built_from_other_sources_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale build (rust/ changed, not rebuilt) must not be called with arguments it does not
    take: capture would fail on the first Relation message."""
    monkeypatch.setattr(native, "ABI", _codec.ABI - 1)
    with pytest.raises(ImportError, match=r"built from other sources .* `pip install -e \.` rebuilds it"):
        _codec.load_native()
    monkeypatch.setattr(native, "ABI", _codec.ABI)
    assert _codec.load_native() is native


ARRAY_TYPES = [1005, 1007, 1016, 1028, 1021, 1022, 1231, 1000, 1009, 1015, 1014, 2951, 1182]
array_text = st.one_of(
    pg_array(st.integers(-(2**63), 2**63 - 1).map(str)),
    pg_array(pg_float),
    pg_array(pg_numeric),
    pg_array(text),
    pg_array(st.sampled_from(["t", "f", "NULL", "null", "007", "-0", "1.50", ".5", "1e3", " 1"])),
    st.text(st.sampled_from('{}",\\ 1aN-.e[]:=tf'), max_size=12),  # malformed or unusual
    st.sampled_from(["[0:1]={1,2}", "{}", "{{}}", "{1,{2}}", '{"a"x}', "{NULL,Null}", "{,}", "{1 }"]),
)


@given(array_text, st.sampled_from(ARRAY_TYPES))
@settings(max_examples=1500)
def test_arrays_encode_like_python(s: str, oid: int) -> None:
    raw = s.encode()
    assert rust_encode(oid, raw) == py_encode(oid, raw), (oid, s)


def test_arrays_are_compiled() -> None:
    k = native
    assert _codec.kind_for(k, 1007) == k.KIND_ARRAY + k.ARRAY_INT
    assert _codec.kind_for(k, 1009) == k.KIND_ARRAY + k.ARRAY_STR
    assert k.encode_value(_codec.kind_for(k, 1231), b"{{1.50,NaN},{-2,NULL}}") == b'[[1.50,"NaN"],[-2,null]]'
    assert (
        k.encode_value(_codec.kind_for(k, 1009), b'{a,"b \\"c\\"",NULL,"NULL"}')
        == b'["a","b \\"c\\"",null,"NULL"]'
    )
    assert k.encode_value(_codec.kind_for(k, 1007), b"[0:1]={1,2}") is None  # bounds: Python decides
