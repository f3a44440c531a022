"""The control plane does not slow with the number of streams (issue 14, defect 7).

No timing assertions: what is counted is work. An idle service with a few hundred
streams reads no log, runs no checkpoint, leaves no waiter behind and starts no
lane; one CREATE or DROP sends the same statements to PostgreSQL and reads no
catalog listing whether 10 or 110 streams exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from prometheus_client import generate_latest

from heliosdb_cdc import WebhookServer
from heliosdb_cdc import _service as service_module
from heliosdb_cdc._config import StreamConfig
from heliosdb_cdc._metrics import REGISTRY
from heliosdb_cdc.postgres import _setup
from heliosdb_cdc.postgres._publication import PublishedTables
from heliosdb_cdc.server._app import overview
from heliosdb_cdc.sinks._memory import MemorySink
from heliosdb_cdc.store import Store
from tests.plugins.postgres import PgDatabase
from tests.test_e2e_webhook import make_config


def memory_stream(name: str, tables: list[str]) -> StreamConfig:
    return StreamConfig.model_validate(
        {"name": name, "tables": tables, "destination": {"type": "memory", "address": name}}
    )


@contextlib.asynccontextmanager
async def running(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[WebhookServer]:
    server = WebhookServer(make_config(pg_db, tmp_path))
    await server.start(serve_http=False)
    try:
        yield server
    finally:
        await server.stop()


def sqlite_statements(server: WebhookServer, action: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``action()``'s result and the SQL statements it ran on the state database."""
    assert server.store is not None
    db = server.store._db
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    try:
        return action(), seen
    finally:
        db.set_trace_callback(None)


def lane_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().endswith("-lane"))


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_idle_streams_do_no_work_and_all_wake_on_a_change(pg_db: PgDatabase, tmp_path: Path) -> None:
    n = 200
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int)")
    async with running(pg_db, tmp_path) as server:
        for i in range(n):
            await server.create_stream(memory_stream(f"s{i}", ["items"]))
        assert server.log is not None and server.store is not None
        log_, store = server.log, server.store
        await asyncio.sleep(0.3)  # every reader reached the end of the log

        reads = 0
        real_read = log_.read

        async def counting_read(from_seq: int, max_n: int) -> Any:
            nonlocal reads
            reads += 1
            return await real_read(from_seq, max_n)

        checkpoints = 0
        real_checkpoint = store.checkpoint

        def counting_checkpoint(*args: Any, **kwargs: Any) -> None:
            nonlocal checkpoints
            checkpoints += 1
            real_checkpoint(*args, **kwargs)

        ticks = 0
        for runner in server.runners.values():
            real_tick = runner._checkpoint

            async def counting_tick(real: Any = real_tick) -> None:
                nonlocal ticks
                ticks += 1
                await real()

            runner._checkpoint = counting_tick  # type: ignore[method-assign]
        log_.read = counting_read  # type: ignore[method-assign]
        store.checkpoint = counting_checkpoint  # type: ignore[method-assign]

        await asyncio.sleep(1.5)  # idle: longer than the old 0.5 s read poll and 50 ms tick
        assert reads == 0, f"{reads} log reads by {n} idle streams in 1.5 s"
        assert ticks == 0, f"{ticks} checkpoint passes by {n} idle streams in 1.5 s"
        assert checkpoints == 0
        # at most one waiter per stream: a waiter that timed out used to stay registered
        assert len(log_._waiters) <= n
        # no lane task before a lane has an event (a webhook stream has 100 lanes)
        assert lane_tasks() == 0

        # one insert reaches every stream, and each checkpoints its new position
        pg_db.execute("INSERT INTO items (v) VALUES (1)")
        sinks = [r.sink for r in server.runners.values() if isinstance(r.sink, MemorySink)]
        assert len(sinks) == n
        await wait_until(lambda: all(s.count == 1 for s in sinks), 30, f"the insert at all {n} streams")
        last = log_.last_seq
        await wait_until(
            lambda: all(c == last for c in store.all_cursors().values()), 10, "every stream's checkpoint"
        )
        assert len(store.all_cursors()) == n
        assert reads >= n and 0 < checkpoints <= 2 * n
        assert sum(r.stats.delivered for r in server.runners.values()) == n
        assert lane_tasks() == n  # one row, one lane per stream
        # the throughput figure falls back to 0 once deliveries stop
        runner = server.runners["s0"]
        assert runner.stats.rate(window=60) == pytest.approx(1 / 60)
        await asyncio.sleep(0.3)
        assert runner.stats.rate(window=0.2) == 0


class _Counting(psycopg2.extensions.cursor):  # type: ignore[misc]
    statements: list[str] = []

    def execute(self, query: Any, vars: Any = None) -> Any:
        text = query.as_string(self.connection) if hasattr(query, "as_string") else str(query)
        _Counting.statements.append(text)
        return super().execute(query, vars)


async def test_create_and_drop_cost_does_not_grow_with_the_streams(
    pg_db: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")

    def counting_connect(dsn: str, **kwargs: Any) -> psycopg2.extensions.connection:
        return _setup.connect(dsn, cursor_factory=_Counting, **kwargs)

    monkeypatch.setattr(service_module, "connect", counting_connect)
    async with running(pg_db, tmp_path) as server:
        assert server.store is not None
        listings = 0
        real_list = server.store.list_streams

        def counting_list() -> list[dict[str, Any]]:
            nonlocal listings
            listings += 1
            return real_list()

        server.store.list_streams = counting_list  # type: ignore[method-assign]

        async def cost(action: Callable[[], Any]) -> tuple[list[str], int]:
            nonlocal listings
            _Counting.statements = []
            listings = 0
            await action()
            return list(_Counting.statements), listings

        await server.create_stream(memory_stream("first", ["a"]))
        for i in range(10):
            await server.create_stream(memory_stream(f"x{i}", ["a"]))
        overview_small = sqlite_statements(server, lambda: overview(server))
        small = await cost(lambda: server.create_stream(memory_stream("probe1", ["a"])))
        assert b'stream="probe1"' in generate_latest(REGISTRY)
        small_drop = await cost(lambda: server.drop_stream("probe1"))
        # a dropped stream's series go with it (they used to pile up until a restart)
        assert b'stream="probe1"' not in generate_latest(REGISTRY)
        for i in range(10, 110):
            await server.create_stream(memory_stream(f"x{i}", ["a"]))
        overview_large = sqlite_statements(server, lambda: overview(server))
        large = await cost(lambda: server.create_stream(memory_stream("probe2", ["a"])))
        large_drop = await cost(lambda: server.drop_stream("probe2"))
        assert small == large, "a CREATE does more work with 110 streams than with 10"
        assert small_drop == large_drop, "a DROP does more work with 110 streams than with 10"
        # the status overview (status page, GET /api/status) reads the catalog once for all
        assert len(overview_small[0]["streams"]) == 11 and len(overview_large[0]["streams"]) == 111
        assert overview_small[1] == overview_large[1]
        assert small[1] == 0 and small_drop[1] == 0  # no listing of the catalog
        # a table every stream already has: resolved, never altered
        assert not any("ALTER PUBLICATION" in q for q in small[0] + small_drop[0])

        # the publication follows the streams' tables: added with the first, dropped with the last
        added = await cost(lambda: server.create_stream(memory_stream("on_b", ["b"])))
        assert any("ALTER PUBLICATION" in q and "ADD" in q and '"b"' in q for q in added[0])
        dropped = await cost(lambda: server.drop_stream("on_b"))
        assert any("ALTER PUBLICATION" in q and "DROP" in q and '"b"' in q for q in dropped[0])
        tables = pg_db.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'heliosdb_cdc'")
        assert [str(t) for (t,) in tables] == ["a"]


def test_published_tables_counts_shares() -> None:
    p = PublishedTables(["public.pinned"])
    assert p.add("s1", ["public.a", "public.pinned"]) == ["public.a"]
    assert p.add("s2", ["public.a", "public.b"]) == ["public.b"]
    assert p.wanted() == {"public.a", "public.b", "public.pinned"}
    assert p.remove("s1") == []  # public.a is still s2's; pinned stays
    assert p.remove("s2") == ["public.a", "public.b"]
    assert p.remove("s2") == []
    assert p.wanted() == {"public.pinned"}
    p.add("s3", ["public.c"])
    with pytest.raises(ValueError, match="s3"):
        p.add("s3", ["public.d"])


def test_store_lookups_for_one_stream_and_for_all(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        for name in ("b", "a"):
            store.create_stream(name, {"tables": ["t"]}, "api", "running")
        assert store.has_stream("a") and not store.has_stream("c")
        assert store.stream_names() == [r["name"] for r in store.list_streams()]
        assert sorted(store.stream_names()) == ["a", "b"]
        row = ("a", "http://x/", "evt_1", 1, "t", "INSERT", b"k", b"{}", "HTTP 500", 3, 0.0, 0.0)
        store.add_dead_letters([row, row, ("b", *row[1:])])
        assert store.dead_letter_counts() == {"a": 2, "b": 1}
        assert store.all_snapshots() == {}
        store.save_snapshot("b", {"kind": "backfill", "tables": ["public.t"], "state": "running"})
        snaps = store.all_snapshots()
        assert list(snaps) == ["b"] and snaps["b"] == store.get_snapshot("b")
    finally:
        store.close()
