"""ChangeDecoder: pgoutput messages (built by tests.pgoutput_builders) to CdcEvents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_cdc import CdcEvent, DecodeError, OperationType
from heliosdb_cdc._record import Record
from heliosdb_cdc.postgres import _decoder
from heliosdb_cdc.postgres._decoder import WATERMARK_PREFIX, ChangeDecoder, TxnEnd, Watermark, table_name
from tests import pgoutput_builders as b
from tests.pgoutput_builders import UNCHANGED

TS = int(datetime(2026, 1, 4, 12, 0, 0, tzinfo=UTC).timestamp() * 1_000_000)
ORDERS = 16384
ITEMS = 16385
ORDERS_COLS = [("id", 23, -1, True), ("status", 25, -1, False), ("amount", 1700, -1, False)]


def orders_rel(ident: str = "d", namespace: str = "public", xid: int | None = None) -> bytes:
    return b.relation(ORDERS, namespace, "orders", ORDERS_COLS, ident, xid)


def items_rel(xid: int | None = None) -> bytes:
    cols = [("order_id", 23, -1, True), ("sku", 25, -1, True), ("qty", 23, -1, False)]
    return b.relation(ITEMS, "shop", "items", cols, "d", xid)


def txn(lsn: int, *changes: bytes, xid: int = 700, ts: int = TS) -> list[bytes]:
    return [b.begin(lsn, ts, xid), *changes, b.commit(lsn, lsn + 8, ts)]


def run(dec: ChangeDecoder, *groups: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for payloads in groups:
        for payload in payloads:
            out.extend(dec.feed(payload))
    return out


def events(out: list[Any]) -> list[CdcEvent]:
    return [e for e in out if isinstance(e, CdcEvent)]


def test_basic_transaction() -> None:
    dec = ChangeDecoder("shop", next_sequence=10)
    out = run(
        dec,
        [orders_rel()],
        txn(
            0x1000,
            b.insert(ORDERS, ["1", "new", "19.99"]),
            b.update(ORDERS, ["1", "paid", "19.99"]),
            b.delete(ORDERS, ["1", None, None]),
            xid=42,
        ),
    )
    evs = events(out)
    assert [e.operation for e in evs] == [OperationType.INSERT, OperationType.UPDATE, OperationType.DELETE]
    ins, upd, dele = evs
    assert ins.key == {"id": 1}
    assert ins.value == {"id": 1, "status": "new", "amount": Decimal("19.99")}
    assert ins.old_value is None
    assert upd.key == {"id": 1}
    assert upd.value == {"id": 1, "status": "paid", "amount": Decimal("19.99")}
    assert upd.old_value is None  # default identity, key unchanged: no old tuple sent
    # default replica identity: DELETE carries the key columns only
    assert dele.key == {"id": 1}
    assert dele.value is None
    assert dele.old_value == {"id": 1}
    for i, e in enumerate(evs, start=1):
        assert e.table == "orders"
        assert e.database == "shop"
        assert e.transaction_id == "txn_42"
        assert e.lsn == 0x1000
        assert e.event_id == f"evt_{0x1000:016x}_{i:06d}"
        assert e.timestamp == datetime(2026, 1, 4, 12, 0, 0, tzinfo=UTC)
        assert e.to_dict()["timestamp"] == "2026-01-04T12:00:00Z"
    assert [e.sequence for e in evs] == [10, 11, 12]
    assert dec.next_sequence == 13
    end = out[-1]
    assert isinstance(end, TxnEnd)
    assert (end.commit_lsn, end.end_lsn, end.xid, end.events, end.commit_ts_us) == (
        0x1000,
        0x1008,
        42,
        3,
        TS,
    )
    assert not dec.in_transaction


def test_update_with_key_change_sends_old_key() -> None:
    dec = ChangeDecoder("db")
    out = run(dec, [orders_rel()], txn(0x10, b.update(ORDERS, ["2", "x", "1"], ["1", None, None], "K")))
    (e,) = events(out)
    assert e.key == {"id": 2}
    assert e.old_value == {"id": 1}
    assert e.value == {"id": 2, "status": "x", "amount": Decimal("1")}


def test_replica_identity_full_update_and_delete() -> None:
    dec = ChangeDecoder("db")
    out = run(
        dec,
        [orders_rel("f")],
        txn(
            0x20,
            b.update(ORDERS, ["1", "paid", "5.00"], ["1", "new", "5.00"], "O"),
            b.delete(ORDERS, ["1", "paid", "5.00"], "O"),
        ),
    )
    upd, dele = events(out)
    assert upd.old_value == {"id": 1, "status": "new", "amount": Decimal("5.00")}
    assert upd.value == {"id": 1, "status": "paid", "amount": Decimal("5.00")}
    assert dele.old_value == {"id": 1, "status": "paid", "amount": Decimal("5.00")}
    assert dele.key == {"id": 1}
    assert dele.value is None


def test_unchanged_toast_is_absent_never_null() -> None:
    dec = ChangeDecoder("db")
    out = run(dec, [orders_rel()], txn(0x30, b.update(ORDERS, ["1", UNCHANGED, "3"])))
    (e,) = events(out)
    assert e.value == {"id": 1, "amount": Decimal("3")}
    assert "status" not in e.value


def test_unchanged_toast_filled_from_full_old_row() -> None:
    dec = ChangeDecoder("db")
    out = run(
        dec,
        [orders_rel("f")],
        txn(0x40, b.update(ORDERS, ["1", UNCHANGED, "3"], ["1", "big text", "2"], "O")),
    )
    (e,) = events(out)
    assert e.value == {"id": 1, "status": "big text", "amount": Decimal("3")}
    assert e.old_value == {"id": 1, "status": "big text", "amount": Decimal("2")}


def test_null_column_is_none() -> None:
    dec = ChangeDecoder("db")
    (e,) = events(run(dec, [orders_rel()], txn(0x50, b.insert(ORDERS, ["1", None, None]))))
    assert e.value == {"id": 1, "status": None, "amount": None}


def test_truncate_one_event_per_table() -> None:
    dec = ChangeDecoder("db")
    out = run(dec, [orders_rel(), items_rel()], txn(0x60, b.truncate([ORDERS, ITEMS], 1)))
    evs = events(out)
    assert [(e.operation, e.table, e.key, e.value, e.old_value) for e in evs] == [
        (OperationType.TRUNCATE, "orders", {}, None, None),
        (OperationType.TRUNCATE, "shop.items", {}, None, None),
    ]
    assert [e.event_id[-6:] for e in evs] == ["000001", "000002"]


def test_table_naming() -> None:
    assert table_name("public", "orders") == "orders"
    assert table_name("sales", "orders") == "sales.orders"
    assert table_name("Public", "x") == "Public.x"
    dec = ChangeDecoder("db")
    out = run(
        dec,
        [items_rel(), b.relation(1, "public", "Mixed Case", [("k", 23, -1, True)])],
        txn(0x70, b.insert(ITEMS, ["1", "abc", "2"]), b.insert(1, ["5"])),
    )
    a, c = events(out)
    assert a.table == "shop.items"
    assert a.key == {"order_id": 1, "sku": "abc"}  # composite key, in column order
    assert c.table == "Mixed Case"


def test_event_ids_are_deterministic() -> None:
    msgs = [orders_rel(), *txn(0x100, b.insert(ORDERS, ["1", "a", "1"]), b.insert(ORDERS, ["2", "b", "2"]))]
    msgs += txn(0x200, b.delete(ORDERS, ["1", None, None]), xid=701)
    first = events(run(ChangeDecoder("db"), msgs))
    second = events(run(ChangeDecoder("db"), msgs))
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert [e.to_dict() for e in first] == [e.to_dict() for e in second]
    assert len({e.event_id for e in first}) == 3
    assert first[2].event_id == f"evt_{0x200:016x}_000001"


@given(st.lists(st.integers(0, 4), min_size=1, max_size=8), st.integers(1, 10_000))
@settings(max_examples=50)
def test_sequence_strictly_increasing(sizes: list[int], start: int) -> None:
    dec = ChangeDecoder("db", next_sequence=start)
    msgs = [orders_rel()]
    for t, n in enumerate(sizes):
        lsn = 0x1000 * (t + 1)
        msgs += txn(lsn, *[b.insert(ORDERS, [str(i), "s", "1"]) for i in range(n)], xid=t + 1)
    out = run(dec, msgs)
    seqs = [e.sequence for e in events(out)]
    assert seqs == list(range(start, start + sum(sizes)))
    ends = [e for e in out if isinstance(e, TxnEnd)]
    assert [e.events for e in ends] == sizes


def test_skip_through_lsn_skips_logged_transactions() -> None:
    msgs = [orders_rel()]
    msgs += txn(0x100, b.insert(ORDERS, ["1", "a", "1"]), xid=1)
    msgs += txn(0x200, b.update(ORDERS, ["1", "b", "1"]), b.insert(ORDERS, ["2", "a", "1"]), xid=2)
    msgs += txn(0x300, b.insert(ORDERS, ["3", "a", "1"]), b.truncate([ORDERS]), xid=3)
    dec = ChangeDecoder("db", next_sequence=5, skip_through_lsn=0x200)
    out = run(dec, msgs)
    evs = events(out)
    assert [e.lsn for e in evs] == [0x300, 0x300]
    assert [e.sequence for e in evs] == [5, 6]
    ends = [e for e in out if isinstance(e, TxnEnd)]
    assert [e.commit_lsn for e in ends] == [0x300]
    # the same transaction, fresh decoder, same ids as without skipping
    full = events(run(ChangeDecoder("db"), msgs))
    assert [e.event_id for e in full[-2:]] == [e.event_id for e in evs]


def test_change_for_unknown_relation_is_dead_lettered_and_capture_goes_on() -> None:
    for change in (b.insert(999, ["1"]), b.delete(999, ["1"])):
        dec = ChangeDecoder("db")
        out = run(dec, [orders_rel(), b.begin(0x10, TS, 1), change, b.insert(ORDERS, ["2", "x", "1"]),
                        b.commit(0x10, 0x18, TS)])  # fmt: skip
        (bad,) = dec.undecodable
        assert "never described" in bad.error and bad.table == "relation oid 999"
        assert bad.payload == change and bad.event_id == "evt_0000000000000010_000001"
        (ev,) = events(out)  # the next row still arrives, with its own place in the transaction
        assert ev.key == {"id": 2} and ev.event_id == "evt_0000000000000010_000002"
        assert ev.sequence == 1  # a dead-lettered row takes no sequence number


def test_truncated_row_is_dead_lettered() -> None:
    dec = ChangeDecoder("db")
    run(dec, [orders_rel(), b.begin(0x10, TS, 1)])
    n = 0
    for raw in (b.insert(ORDERS, ["1", "hello", "2"]), b.insert(ORDERS, ["1", None, b"\x00\x01\x02"])):
        for cut in range(1, len(raw)):
            for feed in (dec.feed, dec.feed_records):
                assert feed(raw[:cut]) == []
                n += 1
                assert dec.undecodable[-1].payload == raw[:cut]
                assert "DecodeError" in dec.undecodable[-1].error
    assert len(dec.undecodable) == n and dec.next_sequence == 1


# the encoded INSERT path (capture's) and the general path must give the same bytes
text_value = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
MIXED = 16390
MIXED_COLS = [
    ("id", 20, -1, True), ("name", 25, -1, False), ("amount", 1700, -1, False),
    ("ok", 16, -1, False), ("score", 701, -1, False), ("doc", 3802, -1, False),
    ("at", 1184, -1, False), ("raw", 17, -1, False), ("tags", 1007, -1, False),
    ("day", 1082, -1, False), ("weird \"col\"", 2950, -1, False),
]  # fmt: skip
pg_float = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e+20", "1.5e-05", "-0"]),
)
pg_numeric = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f")),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
)
pg_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
).map(lambda v: json.dumps(v, separators=(", ", ": ")))
pg_tstz = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f+00")),
    st.sampled_from(["2026-01-04 12:00:00+05:30", "infinity", "2026-01-04 12:00:00-08"]),
)
mixed_row = st.tuples(
    st.integers(-(2**63), 2**63 - 1).map(str),
    text_value,
    pg_numeric,
    st.sampled_from(["t", "f"]),
    pg_float,
    pg_json,
    pg_tstz,
    st.binary(max_size=8).map(lambda r: "\\x" + r.hex()),
    st.lists(st.one_of(st.none(), st.integers(-5, 5)), max_size=3).map(
        lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"
    ),
    st.dates().map(str),
    st.uuids().map(str),
).map(list)


@given(
    st.lists(st.tuples(mixed_row, st.lists(st.booleans(), min_size=11, max_size=11)), min_size=1, max_size=4)
)
@settings(max_examples=150)
def test_encoded_insert_matches_general_path(rows: list[tuple[list[str | None], list[bool]]]) -> None:
    payloads = [b.relation(MIXED, "public", "mixed", MIXED_COLS, "d"), b.begin(0x10, TS, 700)]
    for row, nulls in rows:
        payloads.append(
            b.insert(MIXED, [None if n and i else v for i, (v, n) in enumerate(zip(row, nulls, strict=True))])
        )
    payloads.append(b.commit(0x10, 0x18, TS))
    fast, slow = ChangeDecoder("db"), ChangeDecoder("db")
    got = [r for p in payloads for r in fast.feed_records(p) if isinstance(r, Record)]
    want = [slow._record(e) for p in payloads for e in slow.feed(p) if isinstance(e, CdcEvent)]
    assert got == want
    for rec in got:
        assert orjson.loads(rec.body)["key"] == orjson.loads(rec.key)


def test_encoded_insert_keeps_big_json_integers_and_specials() -> None:
    dec = ChangeDecoder("db")
    row = ["1", None, "NaN", "t", "Infinity", '{"n": 123456789012345678901234567890}',
           "2026-01-04 12:00:00+00", None, None, None, None]  # fmt: skip
    out = [dec.feed_records(p) for p in (b.relation(MIXED, "public", "mixed", MIXED_COLS, "d"),
                                         b.begin(0x10, TS, 7), b.insert(MIXED, row))]  # fmt: skip
    (rec,) = out[-1]
    assert isinstance(rec, Record)
    ev = orjson.loads(rec.body)
    assert ev["event_id"] == "evt_0000000000000010_000001"
    assert ev["value"]["amount"] == "NaN" and ev["value"]["score"] == "Infinity"
    assert ev["value"]["at"] == "2026-01-04T12:00:00Z"
    assert ev["key"] == {"id": 1} and rec.key == b'{"id":1}'
    # every digit of a jsonb integer beyond 64 bits (orjson alone would give a float)
    assert json.loads(rec.body)["value"]["doc"] == {"n": 123456789012345678901234567890}
    assert b'"doc":{"n": 123456789012345678901234567890}' in rec.body  # as PostgreSQL wrote it
    assert list(ev) == ["event_id", "timestamp", "sequence", "operation", "database", "table",
                        "key", "value", "old_value", "transaction_id"]  # fmt: skip


def test_watermark_in_transaction() -> None:
    dec = ChangeDecoder("db", next_sequence=3)
    out = run(
        dec,
        [orders_rel()],
        txn(
            0x500,
            b.insert(ORDERS, ["1", "a", "1"]),
            b.logical_message(WATERMARK_PREFIX, b"low:1"),
            b.logical_message("other", b"ignored"),
            b.origin(1, "elsewhere"),
            b.type_msg(5, "public", "mood"),
        ),
    )
    wm = [x for x in out if isinstance(x, Watermark)]
    assert wm == [Watermark(4, 0x500, 2, b"low:1", TS)]
    assert len(events(out)) == 1


def test_schema_change_event_in_transaction() -> None:
    dec = ChangeDecoder("db")
    cols2 = [*ORDERS_COLS, ("note", 25, -1, False)]
    out = run(
        dec,
        [orders_rel()],
        txn(0x600, b.relation(ORDERS, "public", "orders", cols2), b.insert(ORDERS, ["1", "a", "1", "n"])),
    )
    sc, ins = events(out)
    assert sc.operation == OperationType.SCHEMA_CHANGE
    assert sc.value is not None and sc.value["added"] == ["note"]
    assert ins.value == {"id": 1, "status": "a", "amount": Decimal("1"), "note": "n"}
    # the same Relation again is not a change
    assert events(run(dec, txn(0x700, b.relation(ORDERS, "public", "orders", cols2)))) == []


# -- streamed transactions (protocol v2) ------------------------------------------------


def test_streamed_transaction_spools_and_emits_in_order_at_commit() -> None:
    dec = ChangeDecoder("db")
    top, sub = 900, 901
    first = [
        b.stream_start(top, True),
        orders_rel(xid=top),
        b.insert(ORDERS, ["1", "a", "1"], xid=top),
        b.insert(ORDERS, ["2", "b", "1"], xid=sub),
        b.stream_stop(),
    ]
    assert run(dec, first) == []
    assert top in dec._spools
    spool = dec._spools[top]
    assert spool.tell() > 0  # on a temporary file, not in memory
    # an ordinary transaction in between is emitted at once
    between = events(run(dec, txn(0x50, b.insert(ORDERS, ["9", "z", "9"]), xid=5)))
    assert [e.key for e in between] == [{"id": 9}]
    second = [
        b.stream_start(top, False),
        b.update(ORDERS, ["1", "a2", "1"], xid=top),
        b.delete(ORDERS, ["2", None, None], xid=sub),
        b.stream_stop(),
    ]
    assert run(dec, second) == []
    out = run(dec, [b.stream_commit(top, 0x1000, 0x1008, TS)])
    evs = events(out)
    assert [(e.operation.value, e.key) for e in evs] == [
        ("INSERT", {"id": 1}),
        ("INSERT", {"id": 2}),
        ("UPDATE", {"id": 1}),
        ("DELETE", {"id": 2}),
    ]
    assert [e.event_id for e in evs] == [f"evt_{0x1000:016x}_{i:06d}" for i in range(1, 5)]
    assert all(e.transaction_id == f"txn_{top}" for e in evs)
    assert [e.sequence for e in evs] == [2, 3, 4, 5]
    assert isinstance(out[-1], TxnEnd) and out[-1].events == 4
    assert dec._spools == {}
    assert spool.closed


def test_subtransaction_abort_drops_only_that_subxid() -> None:
    dec = ChangeDecoder("db")
    top = 900
    run(
        dec,
        [
            orders_rel(),
            b.stream_start(top),
            b.insert(ORDERS, ["1", "keep", "1"], xid=top),
            b.insert(ORDERS, ["2", "drop", "1"], xid=901),
            b.insert(ORDERS, ["3", "keep", "1"], xid=902),
            b.stream_stop(),
            b.stream_abort(top, 901),
        ],
    )
    evs = events(run(dec, [b.stream_commit(top, 0x2000, 0x2008, TS)]))
    assert [e.key["id"] for e in evs] == [1, 3]
    assert [e.event_id[-6:] for e in evs] == ["000001", "000002"]


def test_top_level_abort_drops_everything() -> None:
    dec = ChangeDecoder("db")
    run(
        dec,
        [
            orders_rel(),
            b.stream_start(900),
            b.insert(ORDERS, ["1", "x", "1"], xid=900),
            b.stream_stop(),
        ],
    )
    spool = dec._spools[900]
    assert run(dec, [b.stream_abort(900, 900)]) == []
    assert dec._spools == {}
    assert spool.closed
    # the decoder goes on normally
    evs = events(run(dec, txn(0x10, b.insert(ORDERS, ["5", "y", "1"]))))
    assert [e.key for e in evs] == [{"id": 5}]
    assert evs[0].sequence == 1


def test_streamed_commit_skipped_when_already_logged() -> None:
    dec = ChangeDecoder("db", skip_through_lsn=0x5000)
    out = run(
        dec,
        [
            orders_rel(),
            b.stream_start(900),
            b.insert(ORDERS, ["1", "x", "1"], xid=900),
            b.stream_stop(),
            b.stream_commit(900, 0x4000, 0x4008, TS),
        ],
    )
    assert out == []
    assert dec._spools == {}


def test_spooling_uses_a_temporary_file(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    real = _decoder.tempfile.TemporaryFile

    def spy(*args: Any, **kwargs: Any) -> Any:
        f = real(*args, **kwargs)
        made.append(f)
        return f

    monkeypatch.setattr(_decoder.tempfile, "TemporaryFile", spy)
    dec = ChangeDecoder("db")
    big = "x" * 100_000
    run(dec, [orders_rel(), b.stream_start(1)])
    for i in range(20):
        dec.feed(b.insert(ORDERS, [str(i), big, "1"], xid=1))
    run(dec, [b.stream_stop()])
    assert len(made) == 1
    assert made[0].tell() > 20 * 100_000
    evs = events(run(dec, [b.stream_commit(1, 0x10, 0x18, TS)]))
    assert len(evs) == 20
    assert all(e.value is not None and e.value["status"] == big for e in evs)
    dec.close()


def test_table_without_key_is_a_notice_not_a_log_line() -> None:
    dec = ChangeDecoder("db")
    cols = [("msg", 25, -1, False)]
    dec.feed(b.relation(ORDERS, "public", "logs", cols, "d"))
    assert dec.notices == [
        "table logs has no primary key or replica identity: its events carry an empty key "
        "and UPDATE/DELETE cannot name the row"
    ]
    dec.notices.clear()
    dec.feed(b.relation(ITEMS, "public", "full_logs", cols, "f"))  # REPLICA IDENTITY FULL names rows
    assert dec.notices == []


def test_decode_errors_cross_the_worker_boundary_with_their_context() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(DecodeError("truncated 'I' message", offset=12, oid=99)))
    assert isinstance(err, DecodeError) and str(err) == "truncated 'I' message (offset=12, oid=99)"


@pytest.mark.parametrize("streamed", [False, True])
def test_truncate_of_unknown_relation_is_dead_lettered_and_capture_goes_on(streamed: bool) -> None:
    # ORDERS is described, 999 never was: ORDERS' TRUNCATE still arrives, 999's is a dead letter
    trunc = b.truncate([999, ORDERS], xid=9 if streamed else None)
    if streamed:
        msgs = [orders_rel(), b.stream_start(9), trunc, b.stream_stop(), b.stream_commit(9, 0x10, 0x18, TS)]
    else:
        msgs = [orders_rel(), b.begin(0x10, TS, 1), trunc, b.insert(ORDERS, ["2", "x", "1"]),
                b.commit(0x10, 0x18, TS)]  # fmt: skip
    for records in (False, True):
        dec = ChangeDecoder("db")
        out = [x for m in msgs for x in (dec.feed_records(m) if records else dec.feed(m))]
        (bad,) = dec.undecodable
        assert bad.table == "relation oid 999" and bad.operation == "TRUNCATE"
        assert "TRUNCATE of a relation that was never described" in bad.error
        assert bad.payload == trunc and bad.event_id == "evt_0000000000000010_000001"
        assert any("TRUNCATE on relation oid 999" in n for n in dec.notices)
        changes = [x for x in out if isinstance(x, (CdcEvent, Record))]
        assert len(changes) == (1 if streamed else 2)
        first = changes[0]
        assert first.table == "orders"
        if isinstance(first, Record):
            assert orjson.loads(first.body)["operation"] == "TRUNCATE"
        else:
            assert first.operation is OperationType.TRUNCATE and first.event_id.endswith("_000002")
