"""Sans-IO assembly of pgoutput messages into events.

:class:`ChangeDecoder` is fed raw pgoutput payloads and returns the events and
transaction ends they complete: ``feed`` gives :class:`CdcEvent` objects,
``feed_records`` gives :class:`Record` tuples with the event already encoded as
JSON, which is what capture stores (INSERTs, the bulk of any workload, go from
the message bytes to the JSON bytes without building Python values). It holds
the relation cache and the open transaction, nothing else: no sockets, no clock.

Large transactions streamed by protocol v2 are spooled to a temporary file per
transaction (memory stays bounded) and turned into events at Stream Commit.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from .._errors import DecodeError
from .._event import (
    CdcEvent,
    OperationType,
    dumps,
    event_id,
    format_timestamp,
    insert_json,
    parse_event_id,
    row_json_head,
    transaction_id,
    txn_json,
)
from .._record import OP_CODES, OP_INSERT, OP_WATERMARK, Record
from ._codec import load_native, native_module, row_codec
from ._protocol import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
    format_lsn,
    parse_message,
)
from ._types import Converter, Encoder, converter_for, encoder_for

_LEN = struct.Struct("!I")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")


@dataclass(slots=True, frozen=True)
class TxnEnd:
    """A transaction ended: everything before it belongs to a committed transaction."""

    commit_lsn: int
    end_lsn: int
    xid: int
    commit_ts_us: int
    events: int


WATERMARK_PREFIX = "heliosdb-cdc.watermark"
# a captured table was dropped, renamed or re-created (the service's catalog check writes
# it into the WAL, so its SCHEMA_CHANGE event takes its place among the changes)
TABLE_CHANGE_PREFIX = "heliosdb-cdc.table"

# A payload the capture driver puts before a Relation message: what the catalog says of the
# relation (see ``_setup.describe_relation``). pgoutput message types are letters, never 0.
HINT = b"\x00"


def encode_hint(hint: dict[str, Any]) -> bytes:
    return HINT + orjson.dumps(hint)


@dataclass(slots=True, frozen=True)
class Watermark:
    """A snapshot watermark written with ``pg_logical_emit_message`` (see postgres._snapshot)."""

    sequence: int
    commit_lsn: int
    index: int
    content: bytes
    commit_ts_us: int = 0


@dataclass(slots=True, frozen=True)
class Undecodable:
    """A row change that could not become an event: kept as PostgreSQL sent it."""

    event_id: str
    commit_lsn: int
    table: str
    operation: str
    payload: bytes  # the raw pgoutput message
    error: str


_ROW_KINDS = (b"I", b"U", b"D")


@dataclass(slots=True)
class RelationInfo:
    relation: Relation
    table: str
    names: list[str]
    converters: list[Converter]
    key_idx: list[int]
    encoders: list[Encoder]
    heads: list[bytes]  # '"name":' per column, for encoding rows
    insert_head: bytes  # the event's JSON from "operation" to "key" for an INSERT
    native: Any = None  # the compiled codec of this relation (_codec.row_codec), if in use

    @property
    def columns(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "type_oid": c.type_oid, "typmod": c.type_modifier, "key": c.is_key}
            for c in self.relation.columns
        ]


def _key_columns(rel: Relation, catalog_key: list[str] | None) -> list[int]:
    """The row's key: the catalog's primary key / identity index columns when known (under
    REPLICA IDENTITY FULL the message flags every column), else the message's key flags."""
    names = [c.name for c in rel.columns]
    if catalog_key and all(k in names for k in catalog_key):
        return [i for i, n in enumerate(names) if n in catalog_key]
    return [i for i, c in enumerate(rel.columns) if c.is_key]


def table_name(namespace: str, name: str) -> str:
    """``orders`` for tables in ``public``, ``schema.table`` otherwise."""
    return name if namespace == "public" else f"{namespace}.{name}"


class ChangeDecoder:
    """Turns pgoutput payloads into events; one instance per replication session."""

    def __init__(
        self, database: str, next_sequence: int = 1, skip_through_lsn: int = 0, *, native: bool | None = None
    ) -> None:
        self.database = database
        # the compiled codec (None: pure Python); by default as _codec decided for this process
        self._native = native_module() if native is None else load_native() if native else None
        self._native_codecs: dict[int, Any] = {}  # relation oid -> its compiled codec
        self._native_txn: tuple[Any, ...] = ()  # (lsn, xid, time text, its three JSON parts)
        self.next_sequence = next_sequence
        # Transactions whose commit LSN is <= this are already in the local log.
        self.skip_through_lsn = skip_through_lsn
        self.relations: dict[int, RelationInfo] = {}
        self._xid = 0
        self._commit_lsn = 0
        self._ts: datetime | None = None
        self._txn_id = ""
        self._index = 0
        self._ts_us = 0
        self._ts_text = ""
        self._txn_json = txn_json(0, 0, "")
        self._skipping = False
        self._in_stream = False
        self._stream_xid = 0
        self._spools: dict[int, IO[bytes]] = {}
        self._aborted_sub: dict[int, set[int]] = {}
        # table -> column list last seen, to turn a changed Relation into SCHEMA_CHANGE
        self.known_schemas: dict[str, list[dict[str, Any]]] = {}
        self.schema_changed = False
        # warnings for the operator; the driver logs them (this module does no I/O)
        self.notices: list[str] = []
        # relation oid -> the catalog's word on it (key columns, user types), fed by the driver
        self.hints: dict[int, dict[str, Any]] = {}
        # rows that could not become events; the driver dead-letters and clears them
        self.undecodable: list[Undecodable] = []
        self._as_records = False

    # -- public --------------------------------------------------------------
    def feed(self, payload: bytes) -> list[CdcEvent | TxnEnd | Watermark]:
        kind = payload[:1]
        if kind == HINT:
            hint = orjson.loads(payload[1:])
            self.hints[int(hint["oid"])] = hint
            return []
        if kind in _ROW_KINDS:
            if self._in_stream:
                self._spool(payload, self._stream_xid)  # turned into events at Stream Commit
                return []
            if self._skipping:
                return []
            return list(self._row_change(payload, False))
        msg = parse_message(payload, self._in_stream)
        if self._in_stream and isinstance(msg, Truncate):
            self._spool(payload, msg.xid or self._stream_xid)
            return []
        if isinstance(msg, Truncate):
            return [] if self._skipping else self._truncate(msg, payload, False)
        return self._handle(msg)

    def feed_records(self, payload: bytes) -> list[Record | TxnEnd]:
        """Like :meth:`feed`, with events as :class:`Record` (body and key as JSON)."""
        tag = payload[:1]
        if tag and tag in b"IUD" and not self._in_stream and not self._skipping:
            rec = self._native_record(payload)
            if rec is not None:
                return [rec]
        self._as_records = True
        try:
            items = self.feed(payload)
        finally:
            self._as_records = False
        out: list[Record | TxnEnd] = []
        for item in items:
            if isinstance(item, CdcEvent):
                out.append(self._record(item))
            elif isinstance(item, Watermark):
                w = item
                out.append(
                    Record(
                        w.sequence, w.commit_lsn, w.commit_ts_us, OP_WATERMARK, "", b"", w.content, w.index
                    )
                )
            else:
                out.append(item)
        return out

    def _row_change(self, payload: bytes, in_stream: bool) -> list[Any]:
        """One INSERT/UPDATE/DELETE message to its event (a Record under ``feed_records``).

        No row may stop capture: if it cannot become an event, whatever the reason, it goes
        to :attr:`undecodable` with its raw bytes and capture goes on. It keeps its place in
        the transaction (the event ids after it do not move) and takes no sequence number.
        """
        index, seq = self._index, self.next_sequence
        try:
            if self._as_records and payload[:1] == b"I" and not in_stream:
                return [self._insert_record(payload)]  # the fast path
            msg = parse_message(payload, in_stream)
            if not isinstance(msg, (Insert, Update, Delete)):
                raise DecodeError(f"expected a row change, got {type(msg).__name__}")
            events = self._change(msg)
            if self._as_records:
                return [self._record(ev) for ev in events if isinstance(ev, CdcEvent)]
            return events
        except Exception as exc:  # any failure: a dead letter, never a wedge
            self._index, self.next_sequence = index, seq
            self._undecodable_row(payload, in_stream, exc)
            return []

    def _truncate(self, msg: Truncate, payload: bytes, in_stream: bool) -> list[Any]:
        """A TRUNCATE's events, one per relation; a relation never described goes to
        :attr:`undecodable` (with the message) and the others still arrive."""
        out: list[Any] = []
        for oid in msg.relation_oids:
            info = self.relations.get(oid)
            if info is None:
                exc = DecodeError("TRUNCATE of a relation that was never described", oid=oid)
                self._undecodable_row(payload, in_stream, exc, table=f"relation oid {oid}", op="TRUNCATE")
                continue
            out.append(self._make(info, OperationType.TRUNCATE, {}, None, None))
        return out

    def _undecodable_row(
        self, payload: bytes, in_stream: bool, exc: Exception, table: str = "", op: str = ""
    ) -> None:
        self._index += 1
        if not table:
            try:
                (oid,) = _U32.unpack_from(payload, 5 if in_stream else 1)
                info = self.relations.get(oid)
                table = info.table if info is not None else f"relation oid {oid}"
            except struct.error:
                pass
        op = op or {b"I": "INSERT", b"U": "UPDATE", b"D": "DELETE"}.get(payload[:1], "?")
        error = f"{type(exc).__name__}: {exc}"
        self.undecodable.append(
            Undecodable(event_id(self._commit_lsn, self._index), self._commit_lsn, table, op, payload, error)
        )
        self.notices.append(
            f"a {op} on {table or 'an unknown table'} at {format_lsn(self._commit_lsn)} cannot become "
            f"an event ({error}); it went to dead letters with its raw message, capture goes on"
        )

    @staticmethod
    def _record(ev: CdcEvent) -> Record:
        return Record(
            ev.sequence,
            ev.lsn,
            ev.commit_ts_us,
            OP_CODES[ev.operation.value],
            ev.table,
            dumps(ev.key),
            dumps(ev.to_dict()),
            parse_event_id(ev.event_id).index,
        )

    @property
    def index(self) -> int:
        """Index, in its transaction, of the last event made."""
        return self._index

    @property
    def in_transaction(self) -> bool:
        return self._ts is not None

    def close(self) -> None:
        for f in self._spools.values():
            f.close()
        self._spools.clear()

    # -- message handling ----------------------------------------------------
    def _handle(self, msg: Message) -> list[CdcEvent | TxnEnd | Watermark]:
        if isinstance(msg, Begin):
            self._begin(msg.xid, msg.final_lsn, msg.commit_ts_us)
            return []
        if isinstance(msg, Commit):
            return self._end(msg.commit_lsn, msg.end_lsn, msg.commit_ts_us)
        if isinstance(msg, Relation):
            return self._relation(msg)
        if isinstance(msg, Truncate):
            if self._skipping:
                return []
            return self._change(msg)
        if isinstance(msg, StreamStart):
            self._in_stream = True
            self._stream_xid = msg.xid
            return []
        if isinstance(msg, StreamStop):
            self._in_stream = False
            return []
        if isinstance(msg, StreamCommit):
            return self._stream_commit(msg)
        if isinstance(msg, StreamAbort):
            self._stream_abort(msg)
            return []
        if (
            isinstance(msg, LogicalMessage)
            and msg.prefix == WATERMARK_PREFIX
            and self._ts is not None
            and not self._skipping
        ):
            seq = self.next_sequence
            self.next_sequence = seq + 1
            self._index += 1
            ts_us = int(self._ts.timestamp() * 1_000_000)
            return [Watermark(seq, self._commit_lsn, self._index, msg.content, ts_us)]
        if (
            isinstance(msg, LogicalMessage)
            and msg.prefix == TABLE_CHANGE_PREFIX
            and self._ts is not None
            and not self._skipping
        ):
            return [self._table_change(msg.content)]
        return []  # Origin, Type, other logical messages: nothing to emit

    def _begin(self, xid: int, final_lsn: int, ts_us: int) -> None:
        self._xid = xid
        self._commit_lsn = final_lsn
        self._ts = datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)
        self._ts_us = ts_us
        self._ts_text = format_timestamp(self._ts)
        self._txn_id = transaction_id(xid)
        # the event's JSON around the per-event parts, in the guide's field order
        self._txn_json = txn_json(final_lsn, xid, self._ts_text)
        self._index = 0
        self._skipping = final_lsn <= self.skip_through_lsn

    def _end(self, commit_lsn: int, end_lsn: int, ts_us: int) -> list[CdcEvent | TxnEnd | Watermark]:
        skipped = self._skipping
        n = self._index
        self._ts = None
        self._skipping = False
        if skipped:
            return []
        return [TxnEnd(commit_lsn, end_lsn, self._xid, ts_us, n)]

    def _relation(self, rel: Relation) -> list[CdcEvent | TxnEnd | Watermark]:
        hint = self.hints.get(rel.oid, {})
        types: dict[str, int] = hint.get("types", {})
        oids = [types.get(str(c.type_oid), c.type_oid) for c in rel.columns]
        info = RelationInfo(
            relation=rel,
            table=table_name(rel.namespace, rel.name),
            names=[c.name for c in rel.columns],
            converters=[converter_for(oid) for oid in oids],
            key_idx=_key_columns(rel, hint.get("key")),
            encoders=[encoder_for(oid) for oid in oids],
            heads=[dumps(c.name) + b":" for c in rel.columns],
            insert_head=row_json_head("INSERT", self.database, table_name(rel.namespace, rel.name)),
        )
        info.native = row_codec(
            self._native,
            info.names,
            info.encoders,
            info.key_idx,
            self.database,
            info.table,
        )
        if info.native is not None:
            self._native_codecs[rel.oid] = info.native
        else:
            self._native_codecs.pop(rel.oid, None)
        if not info.key_idx and rel.replica_identity != "f":
            self.notices.append(
                f"table {info.table} has no primary key or replica identity: its events carry "
                "an empty key and UPDATE/DELETE cannot name the row"
            )
        self.relations[rel.oid] = info
        cols = info.columns
        previous = self.known_schemas.get(info.table)
        self.known_schemas[info.table] = cols
        if previous == cols:
            return []
        self.schema_changed = True  # the capture persists known_schemas after the next sync
        if previous is None or self._ts is None or self._skipping:
            return []
        return [self._schema_change(info, previous, cols)]

    def _schema_change(
        self, info: RelationInfo, old: list[dict[str, Any]], new: list[dict[str, Any]]
    ) -> CdcEvent:
        old_by = {c["name"]: c for c in old}
        new_by = {c["name"]: c for c in new}
        value = {
            "columns": new,
            "added": [c["name"] for c in new if c["name"] not in old_by],
            "dropped": [c["name"] for c in old if c["name"] not in new_by],
            "type_changed": [
                c["name"]
                for c in new
                if c["name"] in old_by and old_by[c["name"]]["type_oid"] != c["type_oid"]
            ],
        }
        return self._make(info, OperationType.SCHEMA_CHANGE, {}, value, {"columns": old})

    def _table_change(self, content: bytes) -> CdcEvent:
        """SCHEMA_CHANGE of a table dropped, renamed or re-created: ``value`` has
        ``table_change`` and a ``detail`` for people (and ``renamed_to``)."""
        try:
            value = orjson.loads(content)
            table = str(value.pop("table"))
        except (ValueError, KeyError, AttributeError) as exc:
            raise DecodeError(f"invalid {TABLE_CHANGE_PREFIX} message: {exc}") from None
        return self._new_event(table, OperationType.SCHEMA_CHANGE, {}, value, None)

    def _insert_record(self, buf: bytes) -> Record:
        """INSERT, the most common message, from its bytes to the stored JSON in one pass."""
        try:
            (oid,) = _U32.unpack_from(buf, 1)
            info = self._info(oid)
            if buf[5] != 0x4E:  # 'N'
                raise DecodeError("insert without new tuple")
            (ncols,) = _I16.unpack_from(buf, 6)
            pos = 8
            cols: list[bytes | None] = []
            add = cols.append
            heads = info.heads
            encs = info.encoders
            unpack_len = _I32.unpack_from
            size = len(buf)
            for i in range(ncols):
                kind = buf[pos]
                pos += 1
                if kind == 0x74:  # 't'
                    (length,) = unpack_len(buf, pos)
                    pos += 4
                    end = pos + length
                    # a slice past the end would silently give a short value
                    if length < 0 or end > size:
                        raise DecodeError("tuple column value truncated", offset=pos - 4)
                    add(heads[i] + encs[i](buf[pos:end]))
                    pos = end
                elif kind == 0x6E:  # 'n'
                    add(heads[i] + b"null")
                elif kind == 0x62:  # 'b'
                    (length,) = unpack_len(buf, pos)
                    pos += 4
                    if length < 0 or pos + length > size:
                        raise DecodeError("tuple column value truncated", offset=pos - 4)
                    add(heads[i] + dumps(bytes(buf[pos : pos + length])))
                    pos += length
                elif kind == 0x75:  # 'u' cannot occur in an insert; tolerate it
                    add(None)
                else:
                    raise DecodeError(f"unknown tuple column kind {chr(kind)!r}", offset=pos - 1)
        except (struct.error, IndexError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise DecodeError(f"truncated or malformed 'I' message: {exc}") from exc
        key = b"{" + b",".join([cols[i] or heads[i] + b"null" for i in info.key_idx]) + b"}"
        value = b"{" + b",".join([c for c in cols if c is not None]) + b"}"
        self._index += 1
        index = self._index
        seq = self.next_sequence
        self.next_sequence = seq + 1
        body = insert_json(self._txn_json, index, seq, info.insert_head, key, value)
        return Record(seq, self._commit_lsn, self._ts_us, OP_INSERT, info.table, key, body, index)

    def _row(self, info: RelationInfo, values: list[object]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        names = info.names
        convs = info.converters
        for i, v in enumerate(values):
            if v is None:
                row[names[i]] = None
            elif v is UNCHANGED:
                continue  # unchanged TOASTed value: absent, never a fake null
            elif isinstance(v, str):
                row[names[i]] = convs[i](v)
            else:
                row[names[i]] = v
        return row

    def _key(self, info: RelationInfo, values: list[object]) -> dict[str, Any]:
        key: dict[str, Any] = {}
        for i in info.key_idx:
            v = values[i]
            if v is UNCHANGED:
                continue
            key[info.names[i]] = None if v is None else info.converters[i](v)  # type: ignore[arg-type]
        return key

    def _make(
        self,
        info: RelationInfo,
        op: OperationType,
        key: dict[str, Any],
        value: dict[str, Any] | None,
        old: dict[str, Any] | None,
    ) -> CdcEvent:
        return self._new_event(info.table, op, key, value, old)

    def _new_event(
        self,
        table: str,
        op: OperationType,
        key: dict[str, Any],
        value: dict[str, Any] | None,
        old: dict[str, Any] | None,
    ) -> CdcEvent:
        self._index += 1
        seq = self.next_sequence
        self.next_sequence = seq + 1
        assert self._ts is not None
        return CdcEvent(
            event_id=event_id(self._commit_lsn, self._index),
            timestamp=self._ts,
            sequence=seq,
            operation=op,
            database=self.database,
            table=table,
            key=key,
            value=value,
            old_value=old,
            transaction_id=self._txn_id,
            lsn=self._commit_lsn,
            commit_ts_us=self._ts_us,
            timestamp_text=self._ts_text,
        )

    def _info(self, oid: int) -> RelationInfo:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError("change for a relation that was never described", oid=oid) from None

    def _change(self, msg: Insert | Update | Delete | Truncate) -> list[CdcEvent | TxnEnd | Watermark]:
        if isinstance(msg, Insert):
            info = self._info(msg.relation_oid)
            value = self._row(info, msg.new)
            return [self._make(info, OperationType.INSERT, self._key(info, msg.new), value, None)]
        if isinstance(msg, Update):
            info = self._info(msg.relation_oid)
            value = self._row(info, msg.new)
            old = None
            if msg.old is not None:
                old = self._row(info, msg.old) if msg.old_kind == "O" else self._key(info, msg.old)
                # fill unchanged TOASTed columns from the full old row when we have it
                if msg.old_kind == "O":
                    for name in info.names:
                        if name not in value and name in old:
                            value[name] = old[name]
            return [self._make(info, OperationType.UPDATE, self._key(info, msg.new), value, old)]
        if isinstance(msg, Delete):
            info = self._info(msg.relation_oid)
            key = self._key(info, msg.old)
            old = self._row(info, msg.old) if msg.old_kind == "O" else dict(key)
            return [self._make(info, OperationType.DELETE, key, None, old)]
        out: list[CdcEvent | TxnEnd | Watermark] = []
        for oid in msg.relation_oids:
            info = self._info(oid)
            out.append(self._make(info, OperationType.TRUNCATE, {}, None, None))
        return out

    # -- protocol v2 streamed transactions -------------------------------------
    def _spool(self, payload: bytes, xid: int) -> None:
        f = self._spools.get(self._stream_xid)
        if f is None:
            f = tempfile.TemporaryFile(prefix="heliosdb-cdc-txn-")
            self._spools[self._stream_xid] = f
        f.write(_LEN.pack(len(payload)))
        f.write(payload)

    def _stream_abort(self, msg: StreamAbort) -> None:
        if msg.xid == msg.subxid:
            f = self._spools.pop(msg.xid, None)
            if f is not None:
                f.close()
            self._aborted_sub.pop(msg.xid, None)
        else:
            self._aborted_sub.setdefault(msg.xid, set()).add(msg.subxid)

    def _stream_commit(self, msg: StreamCommit) -> list[CdcEvent | TxnEnd | Watermark]:
        self._begin(msg.xid, msg.commit_lsn, msg.commit_ts_us)
        out: list[CdcEvent | TxnEnd | Watermark] = []
        f = self._spools.pop(msg.xid, None)
        aborted = self._aborted_sub.pop(msg.xid, set())
        if f is not None and not self._skipping:
            f.seek(0)
            while header := f.read(4):
                (n,) = _LEN.unpack(header)
                raw = f.read(n)
                if _U32.unpack_from(raw, 1)[0] in aborted:  # every streamed change leads with its xid
                    continue
                if raw[:1] == b"T":
                    m = parse_message(raw, True)
                    assert isinstance(m, Truncate)
                    out.extend(self._truncate(m, raw, True))
                else:
                    out.extend(self._row_change(raw, True))
        if f is not None:
            f.close()
        out.extend(self._end(msg.commit_lsn, msg.end_lsn, msg.commit_ts_us))
        return out

    # -- the compiled codec (postgres/_codec.py) ------------------------------------
    def feed_run(self, payloads: list[bytes], start: int, out: list[Any], plain: bool = False) -> int:
        """The run of INSERT/UPDATE/DELETE messages at ``payloads[start:]`` through the compiled
        codec in one call: their records appended to ``out`` (plain tuples when ``plain``),
        the number of payloads taken returned. 0: feed the next one to :meth:`feed_records`
        (not an I/U/D message, the pure-Python codec, a message the compiled one hands back)."""
        if self._native is None or self._ts is None or self._in_stream or self._skipping:
            return 0
        index = self._index + 1
        seq = self.next_sequence
        id_prefix, mid, tail = self._native_parts()
        k: int = self._native.decode_run(
            payloads,
            start,
            self._native_codecs,
            id_prefix,
            index,
            mid,
            seq,
            tail,
            self._commit_lsn,
            self._ts_us,
            None if plain else Record,
            out,
        )
        self._index += k
        self.next_sequence = seq + k
        return k

    def _native_parts(self) -> tuple[bytes, bytes, bytes]:
        """The event JSON around the compiled codec's part, per transaction:
        ``{"event_id":"evt_<lsn>_`` / ``","timestamp":"...","sequence":`` / ``,"transaction_id":...}``."""
        lsn, xid, ts_text = self._commit_lsn, self._xid, self._ts_text
        cached = self._native_txn
        if cached[:3] != (lsn, xid, ts_text):
            cached = self._native_txn = (
                lsn,
                xid,
                ts_text,
                b'{"event_id":"evt_%016x_' % lsn,
                b'","timestamp":' + dumps(ts_text) + b',"sequence":',
                b',"transaction_id":' + dumps(f"txn_{xid}") + b"}",
            )
        return cached[3], cached[4], cached[5]

    def _native_record(self, buf: bytes) -> Record | None:
        """An I/U/D message through the compiled codec; None: take the Python path (which
        is also the one that reports a malformed message)."""
        if self._ts is None:
            return None
        try:
            (oid,) = _U32.unpack_from(buf, 1)
            info = self.relations[oid]
        except (struct.error, KeyError):
            return None
        if info.native is None:
            return None
        index = self._index + 1
        seq = self.next_sequence
        id_prefix, mid, tail = self._native_parts()
        try:
            out = info.native.change(buf, id_prefix, index, mid, seq, tail)
        except Exception:
            return None  # e.g. a Python encoder refused a value: the Python path raises it
        if out is None:
            return None
        self._index = index
        self.next_sequence = seq + 1
        op, key, body = out
        return Record(seq, self._commit_lsn, self._ts_us, op, info.table, key, body, index)
