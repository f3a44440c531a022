"""A read-only view of the local log from another process (a delivery worker).

The service's process owns the log: it appends, syncs, rolls and trims segments. A
:class:`LogFollower` opens the same directory and reads records from disk, up to the
durable position the owner announces with :meth:`LogFollower.advance` (records past it may
still be cut off by a crash of the owner, so they are never handed out). It never writes.
"""

from __future__ import annotations

import asyncio
import os

from .._errors import StateError
from ._locallog import LocalLog, Position, Record


class LogFollower(LocalLog):
    """Reads the local log in ``directory``; sees records up to the last :meth:`advance`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__(directory, memory_events=0, sync=False)

    def open(self) -> Position:
        """List the segments (nothing is recovered or written: the owner does that)."""
        self._refresh()
        return Position(self.last_seq, 0, 0)

    def _refresh(self) -> None:
        try:
            names = self.fs.listdir(self.dir)
        except OSError as exc:
            raise StateError(f"cannot read the local log: {exc.strerror}", path=str(self.dir)) from exc
        self._segments = sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())

    def advance(self, durable_seq: int) -> None:
        """The owner made records through ``durable_seq`` durable: wake the readers.
        Call on the event loop the readers wait on."""
        if durable_seq <= self.last_seq:
            return
        self._next_seq = durable_seq + 1
        self._refresh()  # a roll made a new segment, retention deleted old ones
        self._wake()

    def read_memory(self, from_seq: int, max_n: int) -> list[Record] | None:
        return [] if from_seq > self.last_seq else None

    async def read(self, from_seq: int, max_n: int) -> list[Record]:
        if from_seq > self.last_seq:
            return []
        recs = await asyncio.to_thread(self.read_disk, from_seq, max_n)
        if not recs:  # a segment deleted or added since the last listing
            self._refresh()
            recs = await asyncio.to_thread(self.read_disk, from_seq, max_n)
            if not recs:
                await asyncio.sleep(0.01)  # not on disk yet as announced: do not spin
        return recs

    def close(self) -> None:
        self._segments = []
