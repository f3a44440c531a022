"""Sans-IO parser of PostgreSQL's ``pgoutput`` logical replication messages.

Bytes in, message objects out; no sockets, no clock. Covers protocol versions
1 and 2 (streamed transactions): Begin, Commit, Origin, Relation, Type, Insert,
Update, Delete, Truncate, Message and the Stream Start/Stop/Commit/Abort
messages. Keepalives are handled by the replication driver, not here: they are
not part of the pgoutput payload.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import DecodeError

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
PG_EPOCH_OFFSET_US = 946_684_800_000_000

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")
_STREAM_COMMIT = struct.Struct("!IbQQq")

# A column value in a tuple: None (SQL NULL), UNCHANGED (TOASTed, not sent),
# str (text format) or bytes (binary format).
UNCHANGED = object()
ColumnValue = object


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(slots=True, frozen=True)
class Begin:
    final_lsn: int
    commit_ts_us: int  # since the Unix epoch
    xid: int


@dataclass(slots=True, frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(slots=True, frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(slots=True, frozen=True)
class Relation:
    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(slots=True, frozen=True)
class TypeMsg:
    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(slots=True, frozen=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: list[object]


@dataclass(slots=True, frozen=True)
class Update:
    xid: int | None
    relation_oid: int
    old: list[object] | None
    old_kind: str | None  # 'K' key only, 'O' full old row, None not sent
    new: list[object]


@dataclass(slots=True, frozen=True)
class Delete:
    xid: int | None
    relation_oid: int
    old: list[object]
    old_kind: str


@dataclass(slots=True, frozen=True)
class Truncate:
    xid: int | None
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class LogicalMessage:
    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True, frozen=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True, frozen=True)
class StreamStop:
    pass


@dataclass(slots=True, frozen=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(slots=True, frozen=True)
class StreamAbort:
    xid: int
    subxid: int


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMsg
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode("utf-8"), end + 1


def parse_tuple(buf: bytes, pos: int) -> tuple[list[object], int]:
    """Parse TupleData at ``pos``; return the values and the position after it."""
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[object] = []
    append = values.append
    unpack_len = _I32.unpack_from
    for _ in range(ncols):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't' text
            (length,) = unpack_len(buf, pos)
            pos += 4
            # fix: a slice past the end (or a negative length) silently gave a short value
            if length < 0 or pos + length > len(buf):
                raise DecodeError("tuple column value truncated", offset=pos - 4)
            append(buf[pos : pos + length].decode("utf-8"))
            pos += length
        elif kind == 0x6E:  # 'n' null
            append(None)
        elif kind == 0x75:  # 'u' unchanged toast
            append(UNCHANGED)
        elif kind == 0x62:  # 'b' binary
            (length,) = unpack_len(buf, pos)
            pos += 4
            if length < 0 or pos + length > len(buf):  # fix: as for 't' above
                raise DecodeError("tuple column value truncated", offset=pos - 4)
            append(bytes(buf[pos : pos + length]))
            pos += length
        else:
            raise DecodeError(f"unknown tuple column kind {chr(kind)!r}", offset=pos - 1)
    return values, pos


def parse_message(buf: bytes, in_stream: bool = False) -> Message:
    """Parse one pgoutput message.

    ``in_stream`` is true between Stream Start and Stream Stop: in that window
    (protocol v2) data messages carry the transaction id first.
    """
    if not buf:
        raise DecodeError("empty pgoutput message")
    tag = buf[0]
    try:
        return _PARSERS[tag](buf, in_stream)
    except KeyError:
        raise DecodeError(f"unknown pgoutput message type {chr(tag)!r}") from None
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"truncated or malformed {chr(tag)!r} message: {exc}") from exc


def _xid(buf: bytes, pos: int, in_stream: bool) -> tuple[int | None, int]:
    if in_stream:
        return _U32.unpack_from(buf, pos)[0], pos + 4
    return None, pos


def _begin(buf: bytes, in_stream: bool) -> Begin:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, ts + PG_EPOCH_OFFSET_US, xid)


def _commit(buf: bytes, in_stream: bool) -> Commit:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_OFFSET_US)


def _origin(buf: bytes, in_stream: bool) -> Origin:
    (lsn,) = _U64.unpack_from(buf, 1)
    name, _ = _cstring(buf, 9)
    return Origin(lsn, name)


def _relation(buf: bytes, in_stream: bool) -> Relation:
    xid, pos = _xid(buf, 1, in_stream)
    (oid,) = _U32.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    ident = chr(buf[pos])
    (ncols,) = _I16.unpack_from(buf, pos + 1)
    pos += 3
    cols = []
    for _ in range(ncols):
        flags = buf[pos]
        cname, pos = _cstring(buf, pos + 1)
        type_oid, typmod = struct.unpack_from("!Ii", buf, pos)
        pos += 8
        cols.append(Column(cname, type_oid, typmod, bool(flags & 1)))
    return Relation(xid, oid, namespace or "pg_catalog", name, ident, tuple(cols))


def _type(buf: bytes, in_stream: bool) -> TypeMsg:
    xid, pos = _xid(buf, 1, in_stream)
    (oid,) = _U32.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    return TypeMsg(xid, oid, namespace, name)


def _insert(buf: bytes, in_stream: bool) -> Insert:
    xid, pos = _xid(buf, 1, in_stream)
    (oid,) = _U32.unpack_from(buf, pos)
    if buf[pos + 4] != 0x4E:  # 'N'
        raise DecodeError("insert without new tuple")
    new, _ = parse_tuple(buf, pos + 5)
    return Insert(xid, oid, new)


def _update(buf: bytes, in_stream: bool) -> Update:
    xid, pos = _xid(buf, 1, in_stream)
    (oid,) = _U32.unpack_from(buf, pos)
    pos += 4
    old: list[object] | None = None
    old_kind: str | None = None
    if buf[pos] in (0x4B, 0x4F):  # 'K' / 'O'
        old_kind = chr(buf[pos])
        old, pos = parse_tuple(buf, pos + 1)
    if buf[pos] != 0x4E:
        raise DecodeError("update without new tuple")
    new, _ = parse_tuple(buf, pos + 1)
    return Update(xid, oid, old, old_kind, new)


def _delete(buf: bytes, in_stream: bool) -> Delete:
    xid, pos = _xid(buf, 1, in_stream)
    (oid,) = _U32.unpack_from(buf, pos)
    kind = chr(buf[pos + 4])
    if kind not in ("K", "O"):
        raise DecodeError(f"delete with unexpected tuple kind {kind!r}")
    old, _ = parse_tuple(buf, pos + 5)
    return Delete(xid, oid, old, kind)


def _truncate(buf: bytes, in_stream: bool) -> Truncate:
    xid, pos = _xid(buf, 1, in_stream)
    (nrels,) = _U32.unpack_from(buf, pos)
    options = buf[pos + 4]
    oids = struct.unpack_from(f"!{nrels}I", buf, pos + 5)
    return Truncate(xid, options, tuple(oids))


def _message(buf: bytes, in_stream: bool) -> LogicalMessage:
    xid, pos = _xid(buf, 1, in_stream)
    flags = buf[pos]
    (lsn,) = _U64.unpack_from(buf, pos + 1)
    prefix, pos = _cstring(buf, pos + 9)
    (length,) = _U32.unpack_from(buf, pos)
    content = bytes(buf[pos + 4 : pos + 4 + length])
    if len(content) != length:
        raise DecodeError("logical message content truncated")
    return LogicalMessage(xid, bool(flags & 1), lsn, prefix, content)


def _stream_start(buf: bytes, in_stream: bool) -> StreamStart:
    (xid,) = _U32.unpack_from(buf, 1)
    return StreamStart(xid, buf[5] == 1)


def _stream_stop(buf: bytes, in_stream: bool) -> StreamStop:
    return StreamStop()


def _stream_commit(buf: bytes, in_stream: bool) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT.unpack_from(buf, 1)
    return StreamCommit(xid, flags, commit_lsn, end_lsn, ts + PG_EPOCH_OFFSET_US)


def _stream_abort(buf: bytes, in_stream: bool) -> StreamAbort:
    xid, subxid = struct.unpack_from("!II", buf, 1)
    return StreamAbort(xid, subxid)


_PARSERS: dict[int, Callable[[bytes, bool], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
}


def format_lsn(lsn: int) -> str:
    """``0/16B3748`` form of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
