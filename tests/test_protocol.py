"""pgoutput parser: round trips through the builders, malformed input, LSN helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_cdc import DecodeError
from heliosdb_cdc.postgres import _protocol as p
from heliosdb_cdc.postgres._protocol import UNCHANGED, parse_message, parse_tuple
from tests import pgoutput_builders as b

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
# commit timestamps: anything representable as int64 microseconds since 2000-01-01
ts_us = st.integers(-(2**62), 2**62).map(lambda d: d + p.PG_EPOCH_OFFSET_US)
# names: any unicode without NUL (C strings) and without surrogates (UTF-8)
name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
nonempty_name = name.filter(bool)
column_value = st.one_of(
    st.none(),
    st.just(UNCHANGED),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=50),
    st.binary(max_size=50),
)
tuple_values = st.lists(column_value, max_size=12)
stream_xid = st.one_of(st.none(), u32)
columns = st.lists(st.tuples(name, u32, i32, st.booleans()), max_size=10)


def _assert_same_values(parsed: list[object], built: list[object]) -> None:
    assert len(parsed) == len(built)
    for got, want in zip(parsed, built, strict=True):
        if want is UNCHANGED:
            assert got is UNCHANGED
        else:
            assert got == want
            assert type(got) is type(want)


@given(u64, ts_us, u32)
def test_begin_round_trip(lsn: int, ts: int, xid: int) -> None:
    assert parse_message(b.begin(lsn, ts, xid)) == p.Begin(lsn, ts, xid)


@given(st.integers(0, 127), u64, u64, ts_us)
def test_commit_round_trip(flags: int, lsn: int, end: int, ts: int) -> None:
    assert parse_message(b.commit(lsn, end, ts, flags)) == p.Commit(flags, lsn, end, ts)


@given(u64, name)
def test_origin_round_trip(lsn: int, origin_name: str) -> None:
    assert parse_message(b.origin(lsn, origin_name)) == p.Origin(lsn, origin_name)


@given(stream_xid, u32, nonempty_name, name, st.sampled_from("dnfi"), columns)
def test_relation_round_trip(xid, oid, namespace, rel_name, ident, cols) -> None:
    msg = parse_message(b.relation(oid, namespace, rel_name, cols, ident, xid), in_stream=xid is not None)
    assert isinstance(msg, p.Relation)
    assert (msg.xid, msg.oid, msg.namespace, msg.name, msg.replica_identity) == (
        xid,
        oid,
        namespace,
        rel_name,
        ident,
    )
    assert msg.columns == tuple(p.Column(c[0], c[1], c[2], c[3]) for c in cols)
    assert msg.qualified_name == f"{namespace}.{rel_name}"


def test_relation_empty_namespace_is_pg_catalog() -> None:
    msg = parse_message(b.relation(1, "", "pg_class", [("oid", 26, -1, True)]))
    assert isinstance(msg, p.Relation)
    assert msg.namespace == "pg_catalog"


def test_relation_key_flag_is_bit_zero() -> None:
    raw = b.relation(1, "public", "t", [("a", 23, -1, False)])
    # set an unrelated flag bit: not a key
    idx = raw.index(b"a\x00") - 1
    assert raw[idx] == 0
    msg = parse_message(raw[:idx] + b"\x02" + raw[idx + 1 :])
    assert isinstance(msg, p.Relation)
    assert msg.columns[0].is_key is False


@given(stream_xid, u32, name, name)
def test_type_round_trip(xid, oid, namespace, type_name) -> None:
    msg = parse_message(b.type_msg(oid, namespace, type_name, xid), in_stream=xid is not None)
    assert msg == p.TypeMsg(xid, oid, namespace, type_name)


@given(stream_xid, u32, tuple_values)
def test_insert_round_trip(xid, oid, values) -> None:
    msg = parse_message(b.insert(oid, values, xid), in_stream=xid is not None)
    assert isinstance(msg, p.Insert)
    assert (msg.xid, msg.relation_oid) == (xid, oid)
    _assert_same_values(msg.new, values)


@given(stream_xid, u32, tuple_values, st.one_of(st.none(), tuple_values), st.sampled_from("KO"))
def test_update_round_trip(xid, oid, new, old, kind) -> None:
    msg = parse_message(b.update(oid, new, old, kind, xid), in_stream=xid is not None)
    assert isinstance(msg, p.Update)
    assert (msg.xid, msg.relation_oid) == (xid, oid)
    _assert_same_values(msg.new, new)
    if old is None:
        assert msg.old is None
        assert msg.old_kind is None
    else:
        assert msg.old_kind == kind
        assert msg.old is not None
        _assert_same_values(msg.old, old)


@given(stream_xid, u32, tuple_values, st.sampled_from("KO"))
def test_delete_round_trip(xid, oid, old, kind) -> None:
    msg = parse_message(b.delete(oid, old, kind, xid), in_stream=xid is not None)
    assert isinstance(msg, p.Delete)
    assert (msg.xid, msg.relation_oid, msg.old_kind) == (xid, oid, kind)
    _assert_same_values(msg.old, old)


@given(stream_xid, st.lists(u32, max_size=20), st.integers(0, 3))
def test_truncate_round_trip(xid, oids, options) -> None:
    msg = parse_message(b.truncate(oids, options, xid), in_stream=xid is not None)
    assert msg == p.Truncate(xid, options, tuple(oids))


@given(stream_xid, st.booleans(), u64, name, st.binary(max_size=200))
def test_logical_message_round_trip(xid, transactional, lsn, prefix, content) -> None:
    raw = b.logical_message(prefix, content, lsn, transactional, xid)
    msg = parse_message(raw, in_stream=xid is not None)
    assert msg == p.LogicalMessage(xid, transactional, lsn, prefix, content)


@given(u32, st.booleans())
def test_stream_start_round_trip(xid, first) -> None:
    assert parse_message(b.stream_start(xid, first)) == p.StreamStart(xid, first)


def test_stream_stop() -> None:
    assert parse_message(b.stream_stop(), in_stream=True) == p.StreamStop()


@given(u32, u64, u64, ts_us)
def test_stream_commit_round_trip(xid, lsn, end, ts) -> None:
    assert parse_message(b.stream_commit(xid, lsn, end, ts)) == p.StreamCommit(xid, 0, lsn, end, ts)


@given(u32, u32)
def test_stream_abort_round_trip(xid, subxid) -> None:
    assert parse_message(b.stream_abort(xid, subxid)) == p.StreamAbort(xid, subxid)


def test_in_stream_changes_the_layout() -> None:
    raw = b.insert(7, ["1"], xid=99)
    msg = parse_message(raw, in_stream=True)
    assert isinstance(msg, p.Insert)
    assert (msg.xid, msg.relation_oid, msg.new) == (99, 7, ["1"])
    # the same bytes read outside a stream are a different (here malformed) message
    with pytest.raises(DecodeError):
        parse_message(raw, in_stream=False)


def test_empty_tuple_and_empty_strings() -> None:
    msg = parse_message(b.insert(1, []))
    assert isinstance(msg, p.Insert)
    assert msg.new == []
    msg = parse_message(b.insert(1, ["", b""]))
    assert isinstance(msg, p.Insert)
    assert msg.new == ["", b""]


def test_parse_tuple_returns_end_position() -> None:
    data = b.tuple_data(["ab", None, b"\x00\x01"]) + b"trailing"
    values, end = parse_tuple(data, 0)
    assert values == ["ab", None, b"\x00\x01"]
    assert data[end:] == b"trailing"


# -- malformed input -----------------------------------------------------------------

SAMPLES = [
    b.begin(1, p.PG_EPOCH_OFFSET_US, 2),
    b.commit(1, 2, p.PG_EPOCH_OFFSET_US),
    b.origin(5, "node"),
    b.relation(1, "public", "orders", [("id", 23, -1, True), ("note", 25, -1, False)]),
    b.type_msg(1, "public", "mood"),
    b.insert(1, ["1", None, "text", b"\x01\x02"]),
    b.insert(1, ["1", "text"]),
    b.update(1, ["1", "x"], ["1", "y"], "O"),
    b.update(1, ["1", "x"], ["1", None], "K"),
    b.update(1, ["1", UNCHANGED, "zz"]),
    b.delete(1, ["1", None]),
    b.delete(1, ["1", "abc"], "O"),
    b.truncate([1, 2, 3], 1),
    b.logical_message("pfx", b"content"),
    b.stream_start(5),
    b.stream_commit(5, 1, 2, p.PG_EPOCH_OFFSET_US),
    b.stream_abort(5, 6),
]


@pytest.mark.parametrize("raw", SAMPLES, ids=lambda r: chr(r[0]))
def test_every_truncation_is_a_decode_error(raw: bytes) -> None:
    parse_message(raw)  # the whole message is valid
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            parse_message(raw[:cut])


@given(st.sampled_from(SAMPLES), st.binary(max_size=64), st.integers(0, 80), st.booleans())
@settings(max_examples=300)
def test_garbage_never_raises_anything_but_decode_error(raw, junk, at, in_stream) -> None:
    mangled = raw[:at] + junk
    try:
        parse_message(mangled, in_stream)
    except DecodeError:
        pass


@given(st.binary(min_size=1, max_size=64), st.booleans())
@settings(max_examples=300)
def test_random_bytes_never_raise_anything_but_decode_error(raw, in_stream) -> None:
    try:
        parse_message(raw, in_stream)
    except DecodeError:
        pass


def test_empty_message() -> None:
    with pytest.raises(DecodeError, match="empty"):
        parse_message(b"")


@pytest.mark.parametrize("tag", [b"Z", b"x", b"\x00", b"\xff", b"P"])
def test_unknown_tag(tag: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown pgoutput message type"):
        parse_message(tag + b"\x00" * 16)


def test_unknown_tuple_column_kind() -> None:
    raw = b"I" + b"\x00\x00\x00\x01" + b"N" + b"\x00\x01" + b"x"
    with pytest.raises(DecodeError, match="unknown tuple column kind"):
        parse_message(raw)


def test_insert_without_new_tuple() -> None:
    raw = b.insert(1, ["1"])
    with pytest.raises(DecodeError, match="new tuple"):
        parse_message(raw[:5] + b"X" + raw[6:])


def test_update_without_new_tuple() -> None:
    raw = b.update(1, ["1"], ["2"], "K")
    with pytest.raises(DecodeError, match="new tuple"):
        parse_message(raw.replace(b"N", b"Q"))


def test_delete_with_bad_kind() -> None:
    with pytest.raises(DecodeError, match="unexpected tuple kind"):
        parse_message(b.delete(1, ["1"], "N"))


def test_text_column_with_invalid_utf8() -> None:
    raw = b"I" + b"\x00\x00\x00\x01N" + b"\x00\x01t\x00\x00\x00\x02\xff\xfe"
    with pytest.raises(DecodeError):
        parse_message(raw)


@pytest.mark.parametrize("length", [-1, -100, 2**31 - 1])
def test_bad_column_length_is_a_decode_error(length: int) -> None:
    import struct

    raw = b"I" + b"\x00\x00\x00\x01N" + b"\x00\x01t" + struct.pack("!i", length) + b"abc"
    with pytest.raises(DecodeError):
        parse_message(raw)


def test_truncate_with_huge_relation_count() -> None:
    raw = b"T" + b"\xff\xff\xff\xff" + b"\x00" + b"\x00\x00\x00\x01"
    with pytest.raises(DecodeError):
        parse_message(raw)


def test_decode_error_is_a_source_error() -> None:
    from heliosdb_cdc import SourceError

    with pytest.raises(SourceError):
        parse_message(b"B")


# -- LSN helpers --------------------------------------------------------------------


@given(u64)
def test_lsn_round_trip(lsn: int) -> None:
    text = p.format_lsn(lsn)
    assert p.parse_lsn(text) == lsn
    assert text == text.upper()


def test_format_lsn_known_values() -> None:
    assert p.format_lsn(0x16B3748) == "0/16B3748"
    assert p.format_lsn((1 << 32) | 0xA) == "1/A"
    assert p.parse_lsn("0/16B3748") == 0x16B3748
