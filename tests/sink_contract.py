"""The contract every sink keeps, as a reusable pytest suite.

Use it for a new sink by subclassing :class:`SinkContract` in a ``test_*.py``
file and giving it a ``harness`` fixture (function scope: a fresh destination
per test) that returns a :class:`SinkHarness`::

    class TestMySinkContract(SinkContract):
        @pytest.fixture
        def harness(self, ...) -> SinkHarness:
            return MyHarness(...)

A harness makes sinks that all deliver to the same (fresh) destination and
reads back what was delivered, in the destination's order (order only has to
hold per key).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from heliosdb_cdc.sinks import OutboundEvent, Outcome, Sink, SinkResult


@dataclass(frozen=True, slots=True)
class Delivered:
    key: bytes
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(self.body)
        return out


class SinkHarness(Protocol):
    def make_sink(self) -> Sink:
        """A new sink instance delivering to this test's destination (not started)."""

    async def read_back(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        """What was delivered (at least ``count`` records, waiting up to ``timeout``)."""


def make_event(seq: int, key: int | str, table: str = "orders", size: int = 0) -> OutboundEvent:
    """An event as the pipeline makes it: body is the guide's event JSON."""
    key_d = {"id": key}
    event = {
        "event_id": f"evt_{seq:016x}_000000",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": seq,
        "operation": "UPDATE",
        "database": "production",
        "table": table,
        "key": key_d,
        "value": {"id": key, "status": "s" * size if size else f"v{seq}", "total": seq * 1.5},
        "old_value": None,
        "transaction_id": f"txn_{seq}",
    }
    return OutboundEvent(
        event_id=event["event_id"],
        sequence=seq,
        table=table,
        operation="UPDATE",
        key=orjson.dumps(key_d, option=orjson.OPT_SORT_KEYS),
        body=orjson.dumps(event),
        timestamp="2026-01-04T12:00:00Z",
        commit_ts_us=1767528000000000 + seq,
        event=event,
    )


def make_events(n: int, keys: int = 5, start: int = 1, table: str = "orders") -> list[OutboundEvent]:
    return [make_event(start + i, (start + i) % keys, table) for i in range(n)]


def assert_order_per_key(delivered: Sequence[Delivered], sent: Sequence[OutboundEvent]) -> None:
    """Each key's events arrive exactly once each, in sequence order."""
    want: dict[bytes, list[int]] = defaultdict(list)
    for ev in sent:
        want[ev.key].append(ev.sequence)
    got: dict[bytes, list[int]] = defaultdict(list)
    for d in delivered:
        got[d.key].append(int(d.event["sequence"]))
    assert dict(got) == dict(want)


def assert_results(results: list[SinkResult], batch: Sequence[OutboundEvent]) -> None:
    assert isinstance(results, list)
    assert len(results) == len(batch)
    assert all(isinstance(r, SinkResult) for r in results)


class SinkContract:
    """Order per key, one result per event, start/close idempotence."""

    timeout = 60.0

    async def test_is_a_sink(self, harness: SinkHarness) -> None:
        sink = harness.make_sink()
        assert isinstance(sink, Sink)
        assert isinstance(sink.name, str) and sink.name
        assert sink.lanes >= 1
        assert sink.max_batch >= 1

    async def test_one_result_per_event(self, harness: SinkHarness) -> None:
        sink = harness.make_sink()
        await sink.start()
        try:
            batch = make_events(7)
            results = await sink.send(batch)
            assert_results(results, batch)
            assert all(r.outcome is Outcome.DELIVERED for r in results), results
            assert await sink.send([]) == []
        finally:
            await sink.close()

    async def test_order_per_key(self, harness: SinkHarness) -> None:
        sink = harness.make_sink()
        await sink.start()
        sent: list[OutboundEvent] = []
        try:
            seq = 1
            for size in (1, 10, 3, 40, 25):
                batch = make_events(min(size, sink.max_batch), keys=4, start=seq)
                seq += len(batch)
                results = await sink.send(batch)
                assert_results(results, batch)
                assert all(r.ok for r in results), results
                sent.extend(batch)
        finally:
            await sink.close()
        delivered = await harness.read_back(len(sent), self.timeout)
        assert_order_per_key(delivered, sent)

    async def test_start_and_close_are_idempotent(self, harness: SinkHarness) -> None:
        sink = harness.make_sink()
        await sink.start()
        await sink.start()
        first = make_events(3, start=1)
        assert all(r.ok for r in await sink.send(first))
        await sink.close()
        await sink.close()
        await sink.start()  # a closed sink can be started again
        second = make_events(3, start=4)
        assert all(r.ok for r in await sink.send(second))
        await sink.close()
        # a second instance to the same destination continues the same stream
        other = harness.make_sink()
        await other.start()
        third = make_events(2, start=7)
        assert all(r.ok for r in await other.send(third))
        await other.close()
        delivered = await harness.read_back(8, self.timeout)
        assert_order_per_key(delivered, first + second + third)
