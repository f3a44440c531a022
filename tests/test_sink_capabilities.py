"""Sinks declare their capabilities in the Sink protocol; the dispatcher reads only
the declarations (it never probes a sink for methods)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import Destination
from heliosdb_cdc._config import CircuitBreakerConfig, ExactlyOnceConfig, RetryConfig
from heliosdb_cdc.delivery import CircuitBreaker, StreamRunner
from heliosdb_cdc.journal import LocalLog
from heliosdb_cdc.sinks import KafkaSink, KinesisSink, MemorySink, Sink, WebhookSink
from heliosdb_cdc.store import SQLiteStore as Store
from heliosdb_cdc.store import sink_mark_key


class _Probe(MemorySink):
    """Has every optional method; what it declares is set per test."""

    def __init__(self, *, tracks_position: bool, resumes_by_mark: bool) -> None:
        super().__init__()
        self.tracks_position = tracks_position
        self.resumes_by_mark = resumes_by_mark
        self.recovered: list[tuple[str | None, int]] = []

    async def committed_sequence(self) -> int | None:
        return 7

    def resume_mark(self, cursor: int) -> str | None:
        return f"mark@{cursor}"

    async def recover(self, mark: str | None, horizon: int) -> None:
        self.recovered.append((mark, horizon))


async def _connect(sink: Sink, tmp_path: Path) -> tuple[StreamRunner, Store]:
    log = LocalLog(tmp_path / "log")
    log.open()
    store = Store(tmp_path / "state")
    store.set_meta(sink_mark_key("s"), "stored-mark")
    runner = StreamRunner(
        "s",
        sink,
        log,
        store,
        endpoint="memory://s",
        breaker=CircuitBreaker("memory://s", CircuitBreakerConfig()),
        retry=RetryConfig(),
        exactly_once=ExactlyOnceConfig(),
        route=lambda _table, _op: True,
    )
    runner.cursor = runner._saved_cursor = runner._last_read = 0
    await asyncio.wait_for(runner._connect(), 10)
    return runner, store


async def test_declared_capabilities_are_used(tmp_path: Path) -> None:
    sink = _Probe(tracks_position=True, resumes_by_mark=True)
    runner, store = await _connect(sink, tmp_path)
    assert runner.cursor == 7  # the destination's own position
    assert not runner.record_deliveries
    assert sink.recovered == [("stored-mark", 0)]
    assert store.get_meta(sink_mark_key("s")) == "mark@7"


async def test_undeclared_methods_are_not_probed(tmp_path: Path) -> None:
    """A sink that has the methods but does not declare the capabilities: the stream
    keeps its own cursor and delivery records, and recover is never called."""
    sink = _Probe(tracks_position=False, resumes_by_mark=False)
    runner, store = await _connect(sink, tmp_path)
    assert runner.cursor == 0
    assert runner.record_deliveries
    assert sink.recovered == []
    assert store.get_meta(sink_mark_key("s")) == "stored-mark"


@pytest.mark.parametrize(
    ("make", "tracks_position", "resumes_by_mark"),
    [
        (lambda: WebhookSink("http://127.0.0.1:9/hook", ["secret"]), False, False),
        (lambda: MemorySink(), True, False),
        (lambda: KafkaSink(Destination(type="kafka", address="127.0.0.1:9", topic="t"), "s"), True, False),
        (
            lambda: KafkaSink(
                Destination(type="kafka", address="127.0.0.1:9", topic="t", options={"transactional": False}),
                "s",
            ),
            False,
            False,
        ),
        (lambda: KinesisSink(Destination(type="kinesis", address="s", region="us-east-1")), False, True),
        (
            lambda: KinesisSink(
                Destination(
                    type="kinesis", address="s", region="us-east-1", options={"restart_dedupe": False}
                )
            ),
            False,
            False,
        ),
    ],
)
def test_builtin_sinks_declare(make: Any, tracks_position: bool, resumes_by_mark: bool) -> None:
    sink = make()
    assert isinstance(sink, Sink)
    assert (sink.tracks_position, sink.resumes_by_mark, sink.needs_event) == (
        tracks_position,
        resumes_by_mark,
        False,
    )
