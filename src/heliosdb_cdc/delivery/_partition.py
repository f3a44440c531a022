"""Partitions of a stream's records, for delivery workers.

A record belongs to partition ``crc32(table NUL key) % count``: stable across processes and
restarts (unlike ``hash()``), so one row's changes always land in the same partition, and
one partition is delivered by one worker (``partition % workers == worker``), in order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..journal import OP_WATERMARK, Record


def partition_of(table: str, key: bytes, count: int) -> int:
    return zlib.crc32(key, zlib.crc32(table.encode() + b"\0")) % count


def owned_partitions(worker: int, workers: int, count: int) -> list[int]:
    return [p for p in range(count) if p % workers == worker]


def stream_floor(stream_cursor: int, cursors: Mapping[int, int], count: int) -> int:
    """Where a stream is done up to, over all its partitions: a partition never
    checkpointed on its own is where the stream's cursor is."""
    return min((cursors.get(p, stream_cursor) for p in range(count)), default=stream_cursor)


@dataclass(frozen=True)
class PartitionSet:
    """The partitions one worker delivers and where each resumes (its checkpointed cursor)."""

    count: int
    floors: Mapping[int, int]  # owned partition -> its cursor

    @classmethod
    def of(
        cls, worker: int, workers: int, count: int, stream_cursor: int, cursors: Mapping[int, int]
    ) -> PartitionSet:
        owned = owned_partitions(worker, workers, count)
        return cls(count, {p: cursors.get(p, stream_cursor) for p in owned})

    @property
    def owned(self) -> Iterable[int]:
        return sorted(self.floors)

    @property
    def start(self) -> int:
        """The lowest cursor of the owned partitions: reading starts after it."""
        return min(self.floors.values(), default=0)

    def takes(self, rec: Record) -> bool:
        """Whether this worker delivers ``rec``: its partition is owned and not yet past it.
        Snapshot watermarks are not (snapshots run with one worker, in the service)."""
        if rec.op == OP_WATERMARK:
            return False
        floor = self.floors.get(partition_of(rec.table, rec.key, self.count))
        return floor is not None and rec.seq > floor
