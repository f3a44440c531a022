"""The stored form of an event, shared by capture (which makes it) and the local log.

A :class:`Record` is a plain named tuple so the hot path can build millions of
them cheaply: the decoder emits one per change with the event already encoded as
JSON (``body``) and its key as canonical JSON (``key``), the local log frames and
stores it, stream runners route on ``table``/``op`` without decoding ``body``.
"""

from __future__ import annotations

from typing import NamedTuple

from ._event import event_id

OP_CODES = {
    "INSERT": 1,
    "UPDATE": 2,
    "DELETE": 3,
    "TRUNCATE": 4,
    "SCHEMA_CHANGE": 5,
    "READ": 6,
    "WATERMARK": 7,  # snapshot watermark, not an event: streams consume it themselves
}
OP_INSERT = 1
OP_WATERMARK = 7
OP_NAMES = {v: k for k, v in OP_CODES.items()}


class Record(NamedTuple):
    """One event as stored: what routing needs, plus the encoded default event."""

    seq: int
    lsn: int  # commit LSN of its transaction
    ts_us: int  # commit time, microseconds since the Unix epoch
    op: int  # OP_CODES
    table: str
    key: bytes
    body: bytes
    index: int = 0  # type: ignore[assignment]  # position in its transaction (shadows tuple.index)

    @property
    def operation(self) -> str:
        return OP_NAMES.get(self.op, "UNKNOWN")

    @property
    def event_id(self) -> str:
        return event_id(self.lsn, self.index)
