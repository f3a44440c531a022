"""The event's identity and encodings (heliosdb_cdc._event): one spelling everywhere.

The INSERT fast path and the generic event encoder must give the same bytes; ids
made by capture and snapshots parse back; a transaction's millionth change keeps
its own id in the stored record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_cdc._event import (
    EventId,
    dumps,
    event_dict,
    event_id,
    format_timestamp,
    insert_json,
    parse_event_id,
    read_event_id,
    row_json_head,
    snapshot_transaction_id,
    transaction_id,
    txn_json,
)
from heliosdb_cdc._record import Record
from heliosdb_cdc.postgres import ChangeDecoder
from tests import pgoutput_builders as b

TS = int(datetime(2026, 1, 4, 12, 0, 0, tzinfo=UTC).timestamp() * 1_000_000)
COLS = [("id", 23, -1, True), ("v", 25, -1, False)]

lsns = st.integers(min_value=0, max_value=2**64 - 1)
indexes = st.integers(min_value=0, max_value=10**9)


def test_spelling() -> None:
    assert event_id(0x16B3748, 2) == "evt_00000000016b3748_000002"
    assert read_event_id(0x16B3748, 7) == "evt_00000000016b3748_r000007"
    assert transaction_id(700) == "txn_700"
    assert snapshot_transaction_id(0x16B3748) == "snapshot_16b3748"


@given(lsns, indexes)
def test_event_id_round_trip(lsn: int, index: int) -> None:
    assert parse_event_id(event_id(lsn, index)) == EventId(lsn, index, False)
    assert parse_event_id(read_event_id(lsn, index)) == EventId(lsn, index, True)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "evt_1",
        "evt_00000000016b3748_",
        "evt_00000000016b3748_12",
        "evt_16b3748_000001",
        "evt_00000000016b374g_000001",
        "txn_00000000016b3748_000001",
        "evt_00000000016b3748_00000x",
        "evt_00000000016b3748_000001_2",
        "evt_00000000016b3748_r",
    ],
)
def test_parse_event_id_names_a_bad_id(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid event id") as info:
        parse_event_id(bad)
    assert repr(bad) in str(info.value)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text()
)


@settings(max_examples=200)
@given(
    lsn=lsns,
    xid=st.integers(min_value=0, max_value=2**32 - 1),
    index=indexes,
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    database=st.text(),
    table=st.text(min_size=1),
    key=st.dictionaries(st.text(), json_scalars, max_size=3),
    value=st.dictionaries(st.text(), json_scalars, max_size=5),
)
def test_insert_fast_path_matches_the_event_encoder(
    lsn: int,
    xid: int,
    index: int,
    seq: int,
    database: str,
    table: str,
    key: dict[str, Any],
    value: dict[str, Any],
) -> None:
    ts = format_timestamp(datetime.fromtimestamp(TS / 1e6, tz=UTC))
    fast = insert_json(
        txn_json(lsn, xid, ts), index, seq, row_json_head("INSERT", database, table), dumps(key), dumps(value)
    )
    slow = dumps(
        event_dict(
            event_id=event_id(lsn, index),
            timestamp=ts,
            sequence=seq,
            operation="INSERT",
            database=database,
            table=table,
            key=key,
            value=value,
            old_value=None,
            transaction_id=transaction_id(xid),
        )
    )
    assert fast == slow
    assert list(orjson.loads(fast)) == [
        "event_id",
        "timestamp",
        "sequence",
        "operation",
        "database",
        "table",
        "key",
        "value",
        "old_value",
        "transaction_id",
    ]


def _records(dec: ChangeDecoder, payload: bytes) -> list[Record]:
    return [r for r in dec.feed_records(payload) if isinstance(r, Record)]


@pytest.mark.parametrize("op", ["INSERT", "UPDATE", "DELETE"])
def test_millionth_change_of_a_transaction_keeps_its_id(op: str) -> None:
    """Past index 999999 the id has seven digits; the stored record's index (and so the
    id delivery de-duplicates by) must be the event's own, not its last six digits."""
    dec = ChangeDecoder("shop")
    _records(dec, b.relation(16384, "public", "items", COLS, "d"))
    _records(dec, b.begin(0x16B3748, TS, 700))
    dec._index = 1_000_000  # as after a million changes in this transaction
    change = {
        "INSERT": b.insert(16384, ["1", "a"]),
        "UPDATE": b.update(16384, ["1", "b"]),
        "DELETE": b.delete(16384, ["1", None]),
    }[op]
    (rec,) = _records(dec, change)
    body = orjson.loads(rec.body)
    assert body["event_id"] == "evt_00000000016b3748_1000001"
    assert rec.index == 1_000_001
    assert rec.event_id == body["event_id"]
