"""Initial snapshots and backfills under concurrent writes: the receiver, applying
events by key, ends with exactly the table's contents."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import Config, Destination, SqlError, StreamConfig, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Received, Receiver
from tests.test_e2e_webhook import make_config

ROWS = int(os.environ.get("HELIOSDB_CDC_SNAPSHOT_ROWS", "10000"))


def apply(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for e in events:  # receipt order; per-key order is what matters
        if e["operation"] in ("READ", "INSERT", "UPDATE"):
            state[e["key"]["id"]] = e["value"]
        elif e["operation"] == "DELETE":
            state.pop(e["key"]["id"], None)
    return state


def table_state(db: PgDatabase) -> dict[int, dict[str, Any]]:
    return {r[0]: {"id": r[0], "v": r[1], "note": r[2]} for r in db.execute("SELECT id, v, note FROM items")}


class Counter:
    n = 0


def storm(db: PgDatabase, stop: threading.Event, seed: int, count: Counter | None = None) -> int:
    rnd = random.Random(seed)
    n = 0
    count = count or Counter()
    conn = db.connect()
    with conn.cursor() as cur:
        while not stop.is_set():
            k = rnd.randint(1, ROWS + 500)
            r = rnd.random()
            if r < 0.7:
                cur.execute("UPDATE items SET v = v + 1 WHERE id = %s", (k,))
            elif r < 0.85:
                cur.execute("DELETE FROM items WHERE id = %s", (k,))
            else:
                cur.execute(
                    "INSERT INTO items (id, v, note) VALUES (%s, 0, 'new') ON CONFLICT (id) DO NOTHING",
                    (k,),
                )
            n += 1
            count.n = n
            time.sleep(0.002)
    conn.close()
    return n


async def wait_snapshot(server: WebhookServer, name: str, timeout: float = 120) -> dict[str, Any]:
    for _ in range(int(timeout / 0.1)):
        st = server.snapshot_status(name)
        if st and st["state"] in ("done", "failed", "cancelled"):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"snapshot not finished: {server.snapshot_status(name)}")


async def settle(receiver: Receiver, db: PgDatabase, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.2)):
        if apply(receiver.events) == table_state(db):
            return
        await asyncio.sleep(0.2)


async def until(pred: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Wait for a state (not for time): fails, naming it, if it does not come."""
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Endpoint:
    """The receiver as an endpoint that can be held down (503) and brought back: while
    it is down no delivery completes, so no snapshot chunk completes either. With
    ``reads_until_down`` it goes down by itself once it has accepted that many READs."""

    def __init__(self, receiver: Receiver, reads_until_down: int | None = None) -> None:
        self.refused: list[dict[str, Any]] = []
        self.down = False
        self.hold_reads = False  # refuse READ events only: a chunk cannot complete
        self.accepted_reads = 0
        self.reads_until_down = reads_until_down
        receiver.respond = self._respond

    def _respond(self, req: Received) -> int:
        body = req.json
        events = body if isinstance(body, list) else [body]
        if self.reads_until_down is not None and self.accepted_reads >= self.reads_until_down:
            self.down = True
        if self.down or (self.hold_reads and any(e["operation"] == "READ" for e in events)):
            self.refused.extend(events)
            return 503
        self.accepted_reads += sum(e["operation"] == "READ" for e in events)
        return 200

    def refused_reads(self) -> set[int]:
        return {e["key"]["id"] for e in self.refused if e["operation"] == "READ"}


def holdable_config(db: PgDatabase, tmp_path: Path, chunk: int) -> Config:
    """Retries that outlast a held endpoint, a circuit that probes again soon, and few
    lanes, so that a held endpoint gets a few requests a second, not a storm."""
    return make_config(
        db,
        tmp_path,
        cdc={"snapshot_chunk_size": chunk},
        webhook={
            "bind_address": f"127.0.0.1:{free_port()}",
            "worker_pool_size": 4,
            "retry": {"initial_delay_ms": 20, "max_delay_ms": 200, "max_attempts": 1_000_000},
            "circuit_breaker": {"failure_threshold": 3, "timeout_secs": 0.2},
        },
    )


@pytest.fixture
def items(pg_db: PgDatabase) -> PgDatabase:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)")
    pg_db.execute(f"INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g")
    return pg_db


def stream(receiver: Receiver, snapshot: str = "initial") -> StreamConfig:
    return StreamConfig(
        name="items_hook",
        tables=["items"],
        destination=Destination(type="webhook", address=receiver.url),
        secret="your-webhook-secret",
        snapshot=snapshot,  # type: ignore[arg-type]
    )


async def test_initial_snapshot_under_write_load(
    items: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    cfg = holdable_config(items, tmp_path, chunk=2000)
    endpoint = Endpoint(receiver)
    stop, count = threading.Event(), Counter()
    async with WebhookServer(cfg) as server:
        writer = asyncio.create_task(asyncio.to_thread(storm, items, stop, 1, count))
        try:
            await until(lambda: count.n >= 20, "the writer to start")
            # the endpoint refuses READ events: the first chunk is read and cannot complete,
            # so the snapshot is still running while the writer goes on (holding every event
            # would leave the lanes' heads to retried live events, and no READ would reach it)
            endpoint.hold_reads = True
            await server.create_stream(stream(receiver))
            await until(endpoint.refused_reads, "the first chunk's READ events")
            during = count.n
            await until(lambda: count.n >= during + 100, "100 writes while the snapshot runs")
            assert server.snapshot_status("items_hook")["state"] == "running"  # type: ignore[index]
            endpoint.hold_reads = False
            st = await wait_snapshot(server, "items_hook")
        finally:
            stop.set()
            await writer
        await settle(receiver, items)
        status = server.stream_status("items_hook")
    assert st["state"] == "done"
    assert "snapshot done" in status["snapshot"]
    reads = [e for e in receiver.events if e["operation"] == "READ"]
    assert max(endpoint.refused_reads()) <= 2000  # held at the first chunk
    assert endpoint.refused_reads() <= {e["key"]["id"] for e in reads}  # delivered once back
    assert len(reads) > ROWS * 0.5
    assert all(not e["timestamp"].startswith("1970") for e in reads)
    assert apply(receiver.events) == table_state(items)


async def test_backfill_where_and_cancel(items: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    cfg = holdable_config(items, tmp_path, chunk=500)
    endpoint = Endpoint(receiver)
    async with WebhookServer(cfg) as server:
        await server.create_stream(stream(receiver, "none"))
        endpoint.down = True  # the backfill cannot finish until the endpoint is back
        await server.start_snapshot("items_hook", "backfill", "id <= 1200 AND v >= 0")
        with pytest.raises(SqlError, match="already has a backfill in progress"):
            await server.start_snapshot("items_hook", "backfill", None)
        endpoint.down = False
        st = await wait_snapshot(server, "items_hook")
        assert st["state"] == "done"
        # done means delivered: every READ is at the receiver already
        ids = sorted(e["key"]["id"] for e in receiver.events if e["operation"] == "READ")
        assert ids == list(range(1, 1201))
        # a full backfill, cancelled while its first chunk waits on the endpoint
        endpoint.refused.clear()
        endpoint.down = True
        await server.start_snapshot("items_hook", "backfill", None)
        await until(endpoint.refused_reads, "the full backfill's first READs")
        await server.cancel_snapshot("items_hook")
        st = server.snapshot_status("items_hook")  # type: ignore[assignment]
        assert st["state"] == "cancelled" and st["rows_sent"] == 0
        with pytest.raises(SqlError, match="no backfill in progress"):
            await server.cancel_snapshot("items_hook")
        endpoint.down = False
    from heliosdb_cdc.store import SQLiteStore as Store

    saved = Store(cfg.state_dir).get_snapshot("items_hook")
    assert saved is not None and saved["state"] == "cancelled" and saved["rows_sent"] == 0


async def test_backfill_resumes_after_restart(items: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    cfg = holdable_config(items, tmp_path, chunk=1000)
    # the endpoint goes down once 3 chunks are in: the 4th cannot complete
    endpoint = Endpoint(receiver, reads_until_down=3000)
    async with WebhookServer(cfg) as server:
        await server.create_stream(stream(receiver, "none"))
        await server.start_snapshot("items_hook", "backfill", None)
        await until(endpoint.refused_reads, "the 4th chunk held")
        await until(
            lambda: (server.snapshot_status("items_hook") or {}).get("rows_sent") == 3000,
            "3 chunks recorded as sent",
        )
        assert min(endpoint.refused_reads()) == 3001
        assert server.snapshot_status("items_hook")["state"] == "running"  # type: ignore[index]
    from heliosdb_cdc.store import SQLiteStore as Store

    saved = Store(cfg.state_dir).get_snapshot("items_hook")
    assert saved is not None and saved["state"] == "running"
    assert saved["rows_sent"] == 3000
    receiver.respond = None  # the endpoint is back
    async with WebhookServer(cfg) as server:
        st = await wait_snapshot(server, "items_hook")
    assert st["state"] == "done"
    # resumed after the 3rd chunk: every row exactly once, none read twice
    reads = [e["key"]["id"] for e in receiver.events if e["operation"] == "READ"]
    assert sorted(reads) == list(range(1, ROWS + 1))


async def test_backfill_needs_a_primary_key(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE nokey (a int)")
    pg_db.execute("INSERT INTO nokey VALUES (1)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.create_stream(
            StreamConfig(
                name="nk",
                tables=["nokey"],
                destination=Destination(type="webhook", address=receiver.url),
            )
        )
        await server.start_snapshot("nk", "backfill", None)
        st = await wait_snapshot(server, "nk")
    assert st["state"] == "failed"
    assert "has no primary key" in st["error"]
