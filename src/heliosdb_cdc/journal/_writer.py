"""What capture writes to: the local log, or a Kafka topic (``journal.kafka``).

Capture (``postgres/_replication.py``) appends decoded batches and confirms to
PostgreSQL the position :meth:`JournalWriter.sync_to_disk` returns, never more: the
writer returns a position only once everything up to it is durable (fsynced to the
local log, or committed in a Kafka transaction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .._record import Record
from ._locallog import FileSystem, Position


class JournalWriter(Protocol):
    """The capture side of a journal."""

    @property
    def dir(self) -> Path:
        """A local directory for capture's own small files (the known table schemas)."""
        ...

    @property
    def fs(self) -> FileSystem:
        """The file operations for those files (fsync, rename: a power cut leaves old or new)."""
        ...

    @property
    def next_seq(self) -> int:
        """Sequence number of the next record."""
        ...

    @property
    def written(self) -> Position:
        """End of the last complete transaction appended (durable or not yet)."""
        ...

    @property
    def durable(self) -> Position:
        """End of the last complete transaction that is durable: what may be confirmed."""
        ...

    @property
    def size_bytes(self) -> int:
        """Bytes held; capture pauses while it exceeds ``cdc.max_log_bytes``."""
        ...

    def append(
        self, events: list[Record], commits: list[tuple[int, int, int, int]], order: list[int]
    ) -> None:
        """Append a batch (see :meth:`LocalLog.append`)."""
        ...

    def sync_to_disk(self) -> Position:
        """Make what was appended durable; return the new durable position."""
        ...

    def rewind_uncommitted(self) -> None:
        """Forget records of a transaction that did not finish (the source resends it)."""
        ...
