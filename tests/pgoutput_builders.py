"""Build pgoutput binary messages from values, following the PostgreSQL
"Logical Replication Message Formats" documentation (protocol versions 1-2).

Tuple column values: ``None`` -> 'n' (NULL), :data:`UNCHANGED` -> 'u'
(unchanged TOAST), ``str`` -> 't' (text), ``bytes`` -> 'b' (binary).
``xid`` arguments are the streamed-transaction xid: pass it only for messages
inside a Stream Start/Stop block (protocol v2).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from heliosdb_cdc.postgres._protocol import PG_EPOCH_OFFSET_US, UNCHANGED

__all__ = [
    "UNCHANGED",
    "begin",
    "commit",
    "delete",
    "insert",
    "logical_message",
    "origin",
    "relation",
    "stream_abort",
    "stream_commit",
    "stream_start",
    "stream_stop",
    "truncate",
    "tuple_data",
    "type_msg",
    "update",
]


def _cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def _pg_ts(unix_us: int) -> bytes:
    return struct.pack("!q", unix_us - PG_EPOCH_OFFSET_US)


def tuple_data(values: Sequence[object]) -> bytes:
    out = [struct.pack("!h", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED:
            out.append(b"u")
        elif isinstance(v, str):
            raw = v.encode("utf-8")
            out.append(b"t" + struct.pack("!i", len(raw)) + raw)
        elif isinstance(v, (bytes, bytearray)):
            out.append(b"b" + struct.pack("!i", len(v)) + bytes(v))
        else:
            raise TypeError(f"cannot encode {v!r} as a tuple column")
    return b"".join(out)


def begin(final_lsn: int, commit_ts_us: int, xid: int) -> bytes:
    return b"B" + struct.pack("!Q", final_lsn) + _pg_ts(commit_ts_us) + struct.pack("!I", xid)


def commit(commit_lsn: int, end_lsn: int, commit_ts_us: int, flags: int = 0) -> bytes:
    return b"C" + struct.pack("!bQQ", flags, commit_lsn, end_lsn) + _pg_ts(commit_ts_us)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack("!Q", lsn) + _cstr(name)


def relation(
    oid: int,
    namespace: str,
    name: str,
    columns: Iterable[tuple[str, int, int, bool]],
    replica_identity: str = "d",
    xid: int | None = None,
) -> bytes:
    """``columns``: (name, type_oid, typmod, is_key)."""
    cols = list(columns)
    out = [b"R", _xid(xid), struct.pack("!I", oid), _cstr(namespace), _cstr(name)]
    out.append(replica_identity.encode("ascii") + struct.pack("!h", len(cols)))
    for cname, type_oid, typmod, is_key in cols:
        out.append(
            struct.pack("!b", 1 if is_key else 0) + _cstr(cname) + struct.pack("!Ii", type_oid, typmod)
        )
    return b"".join(out)


def type_msg(oid: int, namespace: str, name: str, xid: int | None = None) -> bytes:
    return b"Y" + _xid(xid) + struct.pack("!I", oid) + _cstr(namespace) + _cstr(name)


def insert(oid: int, new: Sequence[object], xid: int | None = None) -> bytes:
    return b"I" + _xid(xid) + struct.pack("!I", oid) + b"N" + tuple_data(new)


def update(
    oid: int,
    new: Sequence[object],
    old: Sequence[object] | None = None,
    old_kind: str = "O",
    xid: int | None = None,
) -> bytes:
    out = b"U" + _xid(xid) + struct.pack("!I", oid)
    if old is not None:
        assert old_kind in ("K", "O")
        out += old_kind.encode("ascii") + tuple_data(old)
    return out + b"N" + tuple_data(new)


def delete(oid: int, old: Sequence[object], old_kind: str = "K", xid: int | None = None) -> bytes:
    return b"D" + _xid(xid) + struct.pack("!I", oid) + old_kind.encode("ascii") + tuple_data(old)


def truncate(oids: Sequence[int], options: int = 0, xid: int | None = None) -> bytes:
    return (
        b"T"
        + _xid(xid)
        + struct.pack("!I", len(oids))
        + struct.pack("!b", options)
        + b"".join(struct.pack("!I", o) for o in oids)
    )


def logical_message(
    prefix: str, content: bytes, lsn: int = 0, transactional: bool = True, xid: int | None = None
) -> bytes:
    return (
        b"M"
        + _xid(xid)
        + struct.pack("!b", 1 if transactional else 0)
        + struct.pack("!Q", lsn)
        + _cstr(prefix)
        + struct.pack("!I", len(content))
        + content
    )


def stream_start(xid: int, first_segment: bool = True) -> bytes:
    return b"S" + struct.pack("!Ib", xid, 1 if first_segment else 0)


def stream_stop() -> bytes:
    return b"E"


def stream_commit(xid: int, commit_lsn: int, end_lsn: int, commit_ts_us: int, flags: int = 0) -> bytes:
    return b"c" + struct.pack("!IbQQ", xid, flags, commit_lsn, end_lsn) + _pg_ts(commit_ts_us)


def stream_abort(xid: int, subxid: int) -> bytes:
    return b"A" + struct.pack("!II", xid, subxid)
