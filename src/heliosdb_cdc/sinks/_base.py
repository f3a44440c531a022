"""The one destination interface every sink implements.

A batch of :class:`OutboundEvent` goes in; one :class:`SinkResult` per event
comes out, in the same order. Vendor exceptions never cross this boundary:
a sink converts them into results (or raises :class:`SinkError` for a failure
of the whole batch, which the dispatcher treats as "retry every event").
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: try again later (5xx, timeout, throttled, broker down)
    FAILED = "failed"  # permanent: goes to dead letters (4xx, record too large...)


@dataclass(slots=True)
class OutboundEvent:
    """An event ready to leave: its encoded body plus what routing needs."""

    event_id: str
    sequence: int
    table: str
    operation: str
    key: bytes  # canonical JSON of the event's key: partitioning and ordering unit
    body: bytes  # the payload to send (default event JSON, transformed JSON, Avro...)
    timestamp: str  # commit time, ISO 8601
    commit_ts_us: int = 0
    event: dict[str, Any] | None = None  # decoded event when a sink needs fields
    headers: dict[str, str] = field(default_factory=dict)
    tombstone: bool = False  # Kafka: follow the record with a null-valued one (Debezium, deletes)


@dataclass(slots=True, frozen=True)
class SinkResult:
    outcome: Outcome
    error: str | None = None
    status: int | None = None  # HTTP status or vendor code when there is one
    retry_after: float | None = None  # seconds, when the destination asked for it

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED


DELIVERED = SinkResult(Outcome.DELIVERED)


@runtime_checkable
class Sink(Protocol):
    """A destination. ``lanes`` and ``max_batch`` tell the dispatcher how to feed it.

    * ``lanes``: how many batches may be in flight at once; events with the same
      key always go to the same lane, so per-key order holds.
    * ``max_batch``: most events in one ``send`` call. Within a batch a sink must
      either keep order per key (Kafka: one partition per key) or deliver at most
      one event per key.

    Capabilities: what the dispatcher may rely on beyond ``send``. A sink
    declares them as attributes (the defaults below say "no"); the dispatcher
    reads only the declarations, it never probes for methods. A class that
    subclasses :class:`Sink` inherits the defaults and the no-op methods.

    * ``tracks_position``: the destination keeps its own exactly-once position
      (Kafka transactions commit it with the messages; the memory sink has
      nothing to de-duplicate), so the dispatcher writes no delivery records.
      :meth:`committed_sequence` then says where the destination is after a
      restart (None: nothing known), and the stream resumes there.
    * ``resumes_by_mark``: after a crash the sink finds the records the last run
      wrote itself (Kinesis): the dispatcher stores :meth:`resume_mark` with each
      checkpoint and hands the stored mark to :meth:`recover` after ``start``.
    * ``needs_event``: the sink reads the decoded event (``OutboundEvent.event``),
      not only the encoded ``body``.
    """

    name: str
    lanes: int
    max_batch: int
    tracks_position: bool = False
    resumes_by_mark: bool = False
    needs_event: bool = False

    async def start(self) -> None: ...

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]: ...

    async def close(self) -> None: ...

    async def committed_sequence(self) -> int | None:
        """With ``tracks_position``: the last sequence the destination holds, or None."""
        return None

    def resume_mark(self, cursor: int) -> str | None:
        """With ``resumes_by_mark``: what to store with a checkpoint at ``cursor``."""
        return None

    async def recover(self, mark: str | None, horizon: int) -> None:
        """With ``resumes_by_mark``: find what the last run wrote after ``mark``
        (``horizon``: the highest sequence it may have written)."""
        return None
