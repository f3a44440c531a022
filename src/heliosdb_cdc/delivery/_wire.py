"""What the service and its delivery workers say to each other (one pipe per worker).

Service -> worker: :class:`Tail` (the log is durable through ``seq``), :class:`StartStream`,
:class:`StopStream`, :class:`PauseStream`. Worker -> service: :class:`Stopped` (a stream's
runner stopped and checkpointed) and :class:`Report` (each stream's counters and state,
and the worker's metric increments since its last report). Every message is a small
frozen dataclass, pickled by ``multiprocessing.connection``.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from .._metrics import (
    CHECKPOINT_TIME,
    DEAD_LETTERS,
    DELIVERY_DURATION,
    DELIVERY_TOTAL,
    END_TO_END,
    EVENTS_FILTERED,
    QUEUE_SIZE,
    RETRY_TOTAL,
    STREAM_CURSOR,
    BatchHistogram,
)


@dataclass(frozen=True)
class Tail:
    seq: int


@dataclass(frozen=True)
class StartStream:
    row: dict[str, Any]  # the catalog row (config, state)


@dataclass(frozen=True)
class StopStream:
    name: str


@dataclass(frozen=True)
class PauseStream:
    name: str
    paused: bool


@dataclass(frozen=True)
class Stopped:
    name: str


@dataclass(frozen=True)
class StreamReport:
    """One stream's runner in one worker (its share of the stream)."""

    processed: int = 0
    filtered: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivery_at: float | None = None
    cursor: int = 0
    saved_cursor: int = 0
    queue_memory: int = 0
    queue_overflow: int = 0
    rate: float = 0.0
    p99_ms: float | None = None
    circuit: int = 0  # CircuitState value of the worker's breaker of the endpoint


@dataclass(frozen=True)
class Report:
    streams: dict[str, StreamReport]
    metrics: MetricsDelta


# -- metrics: counters and histograms travel as increments, gauges as values ------------
_COUNTERS: dict[str, Counter] = {
    "filtered": EVENTS_FILTERED,
    "delivery": DELIVERY_TOTAL,
    "retry": RETRY_TOTAL,
    "dead": DEAD_LETTERS,
}
_HISTOGRAMS: dict[str, BatchHistogram] = {"duration": DELIVERY_DURATION, "e2e": END_TO_END}
# gauge -> how the values of several workers combine
_GAUGES: dict[str, tuple[Gauge, Callable[[list[float]], float]]] = {
    "queue": (QUEUE_SIZE, sum),
    "cursor": (STREAM_CURSOR, min),
    "checkpoint": (CHECKPOINT_TIME, max),
}

Key = tuple[str, tuple[str, ...]]  # (metric, label values)


@dataclass(frozen=True)
class MetricsDelta:
    counters: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, tuple[list[int], float]] = field(default_factory=dict)
    gauges: dict[Key, float] = field(default_factory=dict)


class MetricsShipper:
    """Worker side: what changed in this process's delivery metrics since the last call."""

    def __init__(self) -> None:
        self._counters: dict[Key, float] = {}
        self._histograms: dict[Key, tuple[list[int], float]] = {}

    def collect(self) -> MetricsDelta:
        delta = MetricsDelta()
        seen: dict[Key, float] = {}
        for name, counter in _COUNTERS.items():
            for family in counter.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (name, tuple(sample.labels.values()))
                        seen[key] = sample.value
                        inc = sample.value - self._counters.get(key, 0.0)
                        if inc > 0:
                            delta.counters[key] = inc
        self._counters = seen
        hseen: dict[Key, tuple[list[int], float]] = {}
        for name, hist in _HISTOGRAMS.items():
            for labels, child in hist.items():
                key = (name, labels)
                counts, total = child.snapshot()
                hseen[key] = (counts, total)
                old_counts, old_total = self._histograms.get(key, ([0] * len(counts), 0.0))
                added = [a - b for a, b in zip(counts, old_counts, strict=False)]
                if any(added):
                    delta.histograms[key] = (added, total - old_total)
        self._histograms = hseen
        for name, (gauge, _combine) in _GAUGES.items():
            for family in gauge.collect():
                for sample in family.samples:
                    delta.gauges[(name, tuple(sample.labels.values()))] = sample.value
        return delta


class MetricsMerger:
    """Service side: adds the workers' increments to this process's metrics and combines
    their gauges, so ``/metrics`` shows the guide's names and labels, as with one process."""

    def __init__(self) -> None:
        self._gauges: dict[int, dict[Key, float]] = {}  # worker -> its last gauge values

    def apply(self, worker: int, delta: MetricsDelta, streams: Container[str]) -> None:
        """Every series is labelled by stream first; those of ``streams`` only (a report
        sent before a stream was dropped must not bring its series back)."""
        for (name, labels), inc in delta.counters.items():
            if labels[0] in streams:
                _COUNTERS[name].labels(*labels).inc(inc)
        for (name, labels), (counts, total) in delta.histograms.items():
            if labels[0] in streams:
                _HISTOGRAMS[name].labels(*labels).merge(counts, total)
        before = set(self._gauges.get(worker, {}))
        self._gauges[worker] = {k: v for k, v in delta.gauges.items() if k[1][0] in streams}
        self._combine(before | set(delta.gauges))

    def forget(self, worker: int) -> None:
        """A worker died: its gauges no longer count (its counters stay added)."""
        self._combine(set(self._gauges.pop(worker, {})))

    def _combine(self, keys: set[Key]) -> None:
        for key in keys:
            name, labels = key
            gauge, combine = _GAUGES[name]
            values = [g[key] for g in self._gauges.values() if key in g]
            if values:
                gauge.labels(*labels).set(combine(values))
            else:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
