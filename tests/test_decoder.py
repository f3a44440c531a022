"""ChangeDecoder: pgoutput messages (built by tests.pgoutput_builders) to CdcEvents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_cdc import CdcEvent, DecodeError, OperationType
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


def test_change_for_unknown_relation() -> None:
    dec = ChangeDecoder("db")
    with pytest.raises(DecodeError, match="never described"):
        run(dec, txn(0x10, b.insert(999, ["1"])))
    dec = ChangeDecoder("db")
    with pytest.raises(DecodeError, match="never described"):
        run(dec, txn(0x10, b.delete(999, ["1"])))


def test_truncated_insert_is_decode_error() -> None:
    dec = ChangeDecoder("db")
    run(dec, [orders_rel(), b.begin(0x10, TS, 1)])
    for raw in (b.insert(ORDERS, ["1", "hello", "2"]), b.insert(ORDERS, ["1", None, b"\x00\x01\x02"])):
        for cut in range(1, len(raw)):
            with pytest.raises(DecodeError):
                dec.feed(raw[:cut])


# the fast INSERT path and the general path must agree
text_value = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))


@given(st.integers(-(2**31), 2**31 - 1), text_value, st.decimals(allow_nan=False, allow_infinity=False))
@settings(max_examples=100)
def test_fast_insert_matches_general_path(id_: int, status: str | None, amount: Decimal) -> None:
    row = [str(id_), status, str(amount)]
    fast = ChangeDecoder("db")
    (ef,) = events(run(fast, [orders_rel()], txn(0x10, b.insert(ORDERS, row))))
    slow = ChangeDecoder("db")
    run(slow, [orders_rel(), b.begin(0x10, TS, 700)])
    (es,) = slow._change(slow_parse(b.insert(ORDERS, row)))
    assert ef.to_dict() == es.to_dict()
    assert ef.value == {"id": id_, "status": status, "amount": Decimal(str(amount))}


def slow_parse(raw: bytes) -> Any:
    from heliosdb_cdc.postgres._protocol import parse_message

    return parse_message(raw)


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
