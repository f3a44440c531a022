"""Prometheus metrics, with exactly the user guide's names, plus what CDC operators need.

Label values are bounded: ``stream`` and ``table`` come from the catalog,
``endpoint`` is the stream's destination (one per stream), ``status`` and
``queue_type`` are small enums.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# no ``*_created`` gauge beside every counter and histogram: Prometheus 2.x scrapes them as
# unrelated series, doubling the series count for nothing
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets fine enough to answer "is P99 under 50 ms?"
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _BatchHistogramChild:
    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self._bounds, self._counts
        total = 0.0
        with self._lock:
            for v in values:
                counts[bisect_left(bounds, v)] += 1
                total += v
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum

    def merge(self, counts: list[int], total: float) -> None:
        """Add another process's observations (bucket counts and sum): delivery workers."""
        with self._lock:
            for i, n in enumerate(counts[: len(self._counts)]):
                self._counts[i] += n
            self._sum += total


class BatchHistogram(Collector):
    """A labelled histogram that takes a whole batch of observations under one lock.

    Exposed exactly like ``prometheus_client.Histogram`` (``_bucket``/``_count``/
    ``_sum``); the delivery hot path observes one value per event, and the stock
    histogram costs a lock and a Python loop over the buckets for each.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = list(labelnames)
        self._bounds = sorted(float(b) for b in buckets)
        if self._bounds[-1] != float("inf"):
            self._bounds.append(float("inf"))
        self._les = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], _BatchHistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _BatchHistogramChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _BatchHistogramChild(self._bounds)
            return child

    def remove(self, *values: str) -> None:
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def items(self) -> list[tuple[tuple[str, ...], _BatchHistogramChild]]:
        with self._lock:
            return list(self._children.items())

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            counts, total = child.snapshot()
            cumulative, acc = [], 0
            for le, n in zip(self._les, counts, strict=True):
                acc += n
                cumulative.append((le, float(acc)))
            family.add_metric(list(values), cumulative, total)
        yield family


EVENTS_PROCESSED = Counter(
    "heliosdb_cdc_events_processed",
    "Events processed (captured from the WAL and handed to the streams)",
    ["table"],
    registry=REGISTRY,
)
EVENTS_FILTERED = Counter(
    "heliosdb_cdc_events_filtered",
    "Events filtered out by a stream's tables, operations, columns or predicate",
    ["stream"],
    registry=REGISTRY,
)
DELIVERY_DURATION = BatchHistogram(
    "heliosdb_webhook_delivery_duration_seconds",
    "Delivery latency: one request to the destination, from send to response",
    ["stream", "endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_TOTAL = Counter(
    "heliosdb_webhook_delivery",
    # only attempts, so the guide's success rate (success / all) is exact; events given up
    # on are counted by heliosdb_cdc_dead_letters_total
    "Delivery attempts: requests to the destination by outcome (success, failure), per event",
    ["stream", "endpoint", "status"],
    registry=REGISTRY,
)
RETRY_TOTAL = Counter(
    "heliosdb_webhook_retry",
    "Retry attempts",
    ["stream", "endpoint"],
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "heliosdb_circuit_breaker_state",
    "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open",
    ["endpoint"],
    registry=REGISTRY,
)
QUEUE_SIZE = Gauge(
    "heliosdb_event_queue_size",
    "Events waiting per stream: in memory (memory) or only in the local log on disk (overflow)",
    ["stream", "queue_type"],
    registry=REGISTRY,
)
END_TO_END = BatchHistogram(
    "heliosdb_cdc_end_to_end_latency_seconds",
    "Commit in PostgreSQL to acknowledged delivery",
    ["stream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SLOT_LAG_BYTES = Gauge(
    "heliosdb_cdc_replication_slot_lag_bytes",
    "Bytes of WAL between the server's current position and the slot's confirmed position",
    ["slot"],
    registry=REGISTRY,
)
SLOT_RETAINED_BYTES = Gauge(
    "heliosdb_cdc_replication_slot_retained_wal_bytes",
    "Bytes of WAL the slot keeps on the server (current position - restart_lsn)",
    ["slot"],
    registry=REGISTRY,
)
SLOT_LAG_SECONDS = Gauge(
    "heliosdb_cdc_replication_lag_seconds",
    "Seconds between now and the commit time of the last captured transaction, when behind",
    ["slot"],
    registry=REGISTRY,
)
REPLICATION_UP = Gauge(
    "heliosdb_cdc_replication_connected",
    "1 while the replication connection is up",
    ["slot"],
    registry=REGISTRY,
)
CONFIRMED_LSN = Gauge(
    "heliosdb_cdc_confirmed_lsn",
    "Last LSN confirmed to PostgreSQL (durable in the local log)",
    ["slot"],
    registry=REGISTRY,
)
CHECKPOINT_TIME = Gauge(
    "heliosdb_cdc_last_checkpoint_timestamp_seconds",
    "Unix time of a stream's last checkpoint",
    ["stream"],
    registry=REGISTRY,
)
STREAM_CURSOR = Gauge(
    "heliosdb_cdc_stream_position",
    "Last sequence a stream has delivered (or dead-lettered) contiguously",
    ["stream"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "heliosdb_cdc_dead_letters",
    "Events moved to dead letters",
    ["stream", "endpoint"],
    registry=REGISTRY,
)
TABLE_CHANGES = Counter(
    "heliosdb_cdc_table_changes",
    "Captured tables found dropped, renamed or re-created (change = dropped|renamed|recreated)",
    ["table", "change"],
    registry=REGISTRY,
)
TABLE_MISSING = Gauge(
    "heliosdb_cdc_table_missing",
    "1 while a captured table is gone under its name (dropped or renamed): its changes are not captured",
    ["table"],
    registry=REGISTRY,
)
CAPTURE_UNDECODABLE = Counter(
    "heliosdb_cdc_capture_undecodable",
    "Row changes capture could not turn into events (dead-lettered raw, stream '(capture)')",
    ["table"],
    registry=REGISTRY,
)
WORKER_RESTARTS = Counter(
    "heliosdb_cdc_delivery_worker_restarts",
    "Delivery worker processes that exited unexpectedly and were restarted (delivery.workers >= 2)",
    registry=REGISTRY,
)
LOCAL_LOG_BYTES = Gauge(
    "heliosdb_cdc_local_log_bytes",
    "Bytes of the local log on disk",
    registry=REGISTRY,
)


def forget_stream(stream: str, endpoint: str) -> None:
    """Remove a dropped stream's series: without this every stream ever created stays in
    ``/metrics`` (and in memory) until the service restarts."""
    label_sets: list[tuple[Counter | Gauge | BatchHistogram, tuple[str, ...]]] = [
        (EVENTS_FILTERED, (stream,)),
        (DELIVERY_DURATION, (stream, endpoint)),
        (DELIVERY_TOTAL, (stream, endpoint, "success")),
        (DELIVERY_TOTAL, (stream, endpoint, "failure")),
        (RETRY_TOTAL, (stream, endpoint)),
        (QUEUE_SIZE, (stream, "memory")),
        (QUEUE_SIZE, (stream, "overflow")),
        (END_TO_END, (stream,)),
        (CHECKPOINT_TIME, (stream,)),
        (STREAM_CURSOR, (stream,)),
        (DEAD_LETTERS, (stream, endpoint)),
    ]
    for metric, values in label_sets:
        try:
            metric.remove(*values)
        except KeyError:
            pass
