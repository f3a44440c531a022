"""Delivery: stream runners, lanes, retries and circuit breakers.

Each stream's runner reads the journal (:mod:`heliosdb_cdc.journal`) from its
own cursor, shapes events with the pipeline and hands batches to one sink.
It imports nothing from capture (``postgres/``). With ``delivery.workers`` >= 2 the
runners of webhook streams run in worker processes, each over its share of the
partitions (:class:`WorkerSupervisor`, ``_worker.py``, ``_partition.py``).
"""

from ._circuit import CircuitBreaker, CircuitBreakerRegistry, CircuitState
from ._kafka_source import GlobalSeqSink, JournalConsumer, JournalSource, WorkerStore
from ._partition import PartitionSet, partition_of, stream_floor
from ._runner import StreamRunner, decode_event, make_router
from ._supervisor import RemoteStream, WorkerSupervisor, fold_cursors

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerRegistry",
    "CircuitState",
    "GlobalSeqSink",
    "JournalConsumer",
    "JournalSource",
    "PartitionSet",
    "RemoteStream",
    "StreamRunner",
    "WorkerStore",
    "WorkerSupervisor",
    "decode_event",
    "fold_cursors",
    "make_router",
    "partition_of",
    "stream_floor",
]
