"""Delivery: stream runners, lanes, retries and circuit breakers.

Each stream's runner reads the journal (:mod:`heliosdb_cdc.journal`) from its
own cursor, shapes events with the pipeline and hands batches to one sink.
It imports nothing from capture (``postgres/``).
"""

from ._circuit import CircuitBreaker, CircuitBreakerRegistry, CircuitState
from ._kafka_source import GlobalSeqSink, JournalConsumer, JournalSource, WorkerStore
from ._runner import StreamRunner, decode_event, make_router

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerRegistry",
    "CircuitState",
    "GlobalSeqSink",
    "JournalConsumer",
    "JournalSource",
    "StreamRunner",
    "WorkerStore",
    "decode_event",
    "make_router",
]
