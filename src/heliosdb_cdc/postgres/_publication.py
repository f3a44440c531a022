"""Which tables the publication must hold, and for whom.

The publication holds the tables named by ``source.tables`` plus every stream's
tables. Creating or dropping a stream changes only that stream's share:
:class:`PublishedTables` counts, per table, the streams that need it and answers
which tables a change adds to or removes from the publication, so the service
alters the publication for those tables alone instead of re-reading the whole
catalog and re-resolving every stream's tables (which made each CREATE and DROP
slower with every stream already there). Sans-IO: no connection here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class PublishedTables:
    """Reference counts of ``schema.table`` names: pinned ones (``source.tables``)
    and one share per stream."""

    def __init__(self, pinned: Iterable[str] = ()) -> None:
        self._pinned = frozenset(pinned)
        self._by_stream: dict[str, frozenset[str]] = {}
        self._count: Counter[str] = Counter()

    def wanted(self) -> set[str]:
        """Every table the publication must hold."""
        return set(self._pinned) | set(self._count)

    def tables_of(self, stream: str) -> frozenset[str]:
        return self._by_stream.get(stream, frozenset())

    def add(self, stream: str, tables: Iterable[str]) -> list[str]:
        """Record ``stream``'s tables; return those not wanted before, sorted."""
        if stream in self._by_stream:
            raise ValueError(f"stream {stream!r} already has its tables recorded")
        share = frozenset(tables)
        self._by_stream[stream] = share
        added = []
        for t in share:
            self._count[t] += 1
            if self._count[t] == 1 and t not in self._pinned:
                added.append(t)
        return sorted(added)

    def remove(self, stream: str) -> list[str]:
        """Forget ``stream``'s share; return the tables no longer wanted, sorted."""
        share = self._by_stream.pop(stream, frozenset())
        gone = []
        for t in share:
            self._count[t] -= 1
            if self._count[t] <= 0:
                del self._count[t]
                if t not in self._pinned:
                    gone.append(t)
        return sorted(gone)
