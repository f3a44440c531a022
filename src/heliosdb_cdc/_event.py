"""The change event: exactly the user guide's default event, its identity and its encodings.

This module is the one place that spells an event's identity and JSON form;
everything here is a pure function of its arguments (no I/O, no state), so
capture, snapshots, delivery and native codecs all produce the same bytes:

* :func:`event_id` / :func:`parse_event_id`: ``evt_<commit LSN, 16 hex>_<index>``
  (``_r<row>`` for snapshot rows, :func:`read_event_id`); the same change read
  twice gets the same id. ``sequence`` is the journal's sequence number.
* :func:`transaction_id`, :func:`snapshot_transaction_id`.
* :func:`event_dict` (the guide's field order) and :func:`dumps`; the INSERT fast
  path builds the same bytes from :func:`txn_json`, :func:`row_json_head` and
  :func:`insert_json`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

# the guide's default event, in its order
EVENT_FIELDS = (
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
)


class OperationType(enum.Enum):
    """Kind of change, as in the guide's ``OperationType``."""

    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"
    SCHEMA_CHANGE = "SCHEMA_CHANGE"
    READ = "READ"

    # The guide's Rust spelling, for users porting code.
    Insert = "INSERT"
    Update = "UPDATE"
    Delete = "DELETE"
    Truncate = "TRUNCATE"
    SchemaChange = "SCHEMA_CHANGE"
    Read = "READ"

    @classmethod
    def parse(cls, value: str | OperationType) -> OperationType:
        if isinstance(value, OperationType):
            return value
        norm = value.strip().upper().replace(" ", "_")
        if norm == "SCHEMACHANGE":
            norm = "SCHEMA_CHANGE"
        try:
            return cls(norm)
        except ValueError:
            allowed = ", ".join(m.value for m in cls if m.name.isupper())
            raise ValueError(f"unknown operation {value!r}; expected one of {allowed}") from None


class JsonText:
    """A ``json``/``jsonb`` value as PostgreSQL wrote it.

    Encoded verbatim (every digit, key order and duplicate keys of ``json`` kept, no depth
    limit); :meth:`parse` gives the Python value, numbers with a fraction as exact Decimals.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def parse(self) -> Any:
        import json

        return json.loads(self.text, parse_float=Decimal)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"JsonText({self.text!r})"


def plain(obj: Any) -> Any:
    """``obj`` with every :class:`JsonText` parsed: the value a predicate sees."""
    if isinstance(obj, JsonText):
        return obj.parse()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, JsonText):
        return orjson.Fragment(obj.text)
    if isinstance(obj, Decimal):
        if obj.is_finite():
            # positional notation, digits as PostgreSQL sent them (str() would say 9.9E-7)
            return orjson.Fragment(format(obj, "f"))
        return str(obj)
    if isinstance(obj, (bytes, memoryview)):
        import base64

        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(obj: Any) -> bytes:
    """Encode to JSON bytes; Decimal keeps every digit, NaN floats are refused upstream."""
    try:
        return orjson.dumps(obj, default=_json_default)
    except TypeError:
        # orjson refuses integers beyond 64 bits: write them out exactly
        return orjson.dumps(_big_ints(obj), default=_json_default)


def _big_ints(obj: Any) -> Any:
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int) and not -(2**63) <= obj < 2**64:
        return orjson.Fragment(str(obj))
    if isinstance(obj, dict):
        return {k: _big_ints(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_big_ints(v) for v in obj]
    return obj


@dataclass(slots=True)
class CdcEvent:
    """One committed row change.

    ``key``, ``value`` and ``old_value`` are dicts of column name to JSON-ready
    value. ``lsn`` (commit LSN) is internal and not part of the JSON form.
    """

    event_id: str
    timestamp: datetime
    sequence: int
    operation: OperationType
    database: str
    table: str
    key: dict[str, Any]
    value: dict[str, Any] | None
    old_value: dict[str, Any] | None
    transaction_id: str
    lsn: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # commit time, precomputed once per transaction by the decoder
    commit_ts_us: int = 0
    timestamp_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = event_dict(
            event_id=self.event_id,
            timestamp=self.timestamp_text or format_timestamp(self.timestamp),
            sequence=self.sequence,
            operation=self.operation.value,
            database=self.database,
            table=self.table,
            key=self.key,
            value=self.value,
            old_value=self.old_value,
            transaction_id=self.transaction_id,
        )
        if self.extra:
            d.update(self.extra)
        return d

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CdcEvent:
        known = set(EVENT_FIELDS)
        ts = d["timestamp"]
        return cls(
            event_id=d["event_id"],
            timestamp=datetime.fromisoformat(ts.replace("Z", "+00:00")) if isinstance(ts, str) else ts,
            sequence=int(d["sequence"]),
            operation=OperationType.parse(d["operation"]),
            database=d["database"],
            table=d["table"],
            key=d.get("key") or {},
            value=d.get("value"),
            old_value=d.get("old_value"),
            transaction_id=d["transaction_id"],
            extra={k: v for k, v in d.items() if k not in known},
        )


def format_timestamp(ts: datetime) -> str:
    """ISO 8601 in UTC with a trailing Z, as in the guide (``2026-01-04T12:00:00Z``)."""
    s = ts.isoformat()
    if s.endswith("+00:00"):
        s = s[:-6] + "Z"
    return s


# -- identity ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventId:
    """An event id taken apart: commit LSN of its transaction, index in it, snapshot row or not."""

    commit_lsn: int
    index: int
    read: bool = False


def event_id_prefix(commit_lsn: int) -> str:
    """What every event id of the transaction committed at ``commit_lsn`` starts with."""
    return f"evt_{commit_lsn:016x}_"


def event_id(commit_lsn: int, index: int) -> str:
    """Derived from the WAL position: the same change read twice has the same id.

    >>> event_id(0x16B3748, 2)
    'evt_00000000016b3748_000002'
    """
    return f"{event_id_prefix(commit_lsn)}{index:06d}"


def read_event_id(commit_lsn: int, row: int) -> str:
    """A snapshot row's id: the commit LSN of the chunk's high watermark and the row's place.

    >>> read_event_id(0x16B3748, 7)
    'evt_00000000016b3748_r000007'
    """
    return f"{event_id_prefix(commit_lsn)}r{row:06d}"


def parse_event_id(value: str) -> EventId:
    """The parts of an id made by :func:`event_id` or :func:`read_event_id`.

    >>> parse_event_id("evt_00000000016b3748_000002")
    EventId(commit_lsn=23803720, index=2, read=False)

    A transaction's millionth change and beyond has a longer index, still exact:

    >>> parse_event_id("evt_00000000016b3748_1000001").index
    1000001
    """
    parts = value.split("_")
    if len(parts) == 3 and parts[0] == "evt" and len(parts[1]) == 16:
        index = parts[2]
        read = index.startswith("r")
        digits = index[1:] if read else index
        if len(digits) >= 6 and digits.isascii() and digits.isdigit():
            try:
                return EventId(int(parts[1], 16), int(digits), read)
            except ValueError:
                pass
    raise ValueError(f"invalid event id {value!r}: expected evt_<16 hex digits>_<index>")


def transaction_id(xid: int) -> str:
    """The ``transaction_id`` of a change: ``txn_<PostgreSQL xid>``."""
    return f"txn_{xid}"


def snapshot_transaction_id(commit_lsn: int) -> str:
    """The ``transaction_id`` of a snapshot chunk's rows: ``snapshot_<watermark LSN, hex>``."""
    return f"snapshot_{commit_lsn:x}"


# -- encodings --------------------------------------------------------------------------


def event_dict(
    *,
    event_id: str,
    timestamp: str,
    sequence: int,
    operation: str,
    database: str,
    table: str,
    key: dict[str, Any],
    value: Any,
    old_value: Any,
    transaction_id: str,
) -> dict[str, Any]:
    """The guide's default event, in its field order (:data:`EVENT_FIELDS`)."""
    return {
        "event_id": event_id,
        "timestamp": timestamp,
        "sequence": sequence,
        "operation": operation,
        "database": database,
        "table": table,
        "key": key,
        "value": value,
        "old_value": old_value,
        "transaction_id": transaction_id,
    }


class TxnJson(NamedTuple):
    """The JSON of a transaction's events around the per-event parts (see :func:`insert_json`)."""

    head: bytes  # {"event_id":"evt_<lsn>_
    mid: bytes  # ","timestamp":"<commit time>","sequence":
    tail: bytes  # ,"old_value":null,"transaction_id":"txn_<xid>"}


def txn_json(commit_lsn: int, xid: int, timestamp: str) -> TxnJson:
    """Once per transaction: the bytes every INSERT event of it shares."""
    return TxnJson(
        b'{"event_id":"' + event_id_prefix(commit_lsn).encode(),
        b'","timestamp":' + dumps(timestamp) + b',"sequence":',
        b',"old_value":null,"transaction_id":' + dumps(transaction_id(xid)) + b"}",
    )


def row_json_head(operation: str, database: str, table: str) -> bytes:
    """Once per table: the bytes between ``sequence`` and the key."""
    return (
        b',"operation":'
        + dumps(operation)
        + b',"database":'
        + dumps(database)
        + b',"table":'
        + dumps(table)
        + b',"key":'
    )


def insert_json(txn: TxnJson, index: int, sequence: int, row_head: bytes, key: bytes, value: bytes) -> bytes:
    """An event without ``old_value`` from its parts, byte for byte ``dumps(event_dict(...))``.

    ``key`` and ``value`` are JSON objects already encoded (as :func:`dumps` writes them).
    """
    parts = (txn.head, index, txn.mid, sequence, row_head, key, value, txn.tail)
    return b'%s%06d%s%d%s%s,"value":%s%s' % parts
