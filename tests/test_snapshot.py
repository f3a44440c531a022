"""Initial snapshots and backfills under concurrent writes: the receiver, applying
events by key, ends with exactly the table's contents."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import Destination, SqlError, StreamConfig, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
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


def storm(db: PgDatabase, stop: threading.Event, seed: int) -> int:
    rnd = random.Random(seed)
    n = 0
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
    cfg = make_config(items, tmp_path, cdc={"snapshot_chunk_size": 2000})
    stop = threading.Event()
    async with WebhookServer(cfg) as server:
        writer = asyncio.create_task(asyncio.to_thread(storm, items, stop, 1))
        await asyncio.sleep(0.2)
        await server.create_stream(stream(receiver))
        st = await wait_snapshot(server, "items_hook")
        stop.set()
        writes = await writer
        await settle(receiver, items)
        status = server.stream_status("items_hook")
    assert st["state"] == "done"
    assert writes > 100
    assert "snapshot done" in status["snapshot"]
    reads = [e for e in receiver.events if e["operation"] == "READ"]
    assert len(reads) > ROWS * 0.5
    assert all(not e["timestamp"].startswith("1970") for e in reads)
    assert apply(receiver.events) == table_state(items)


async def test_backfill_where_and_cancel(items: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    cfg = make_config(items, tmp_path, cdc={"snapshot_chunk_size": 500})
    async with WebhookServer(cfg) as server:
        await server.create_stream(stream(receiver, "none"))
        await server.start_snapshot("items_hook", "backfill", "id <= 1200 AND v >= 0")
        with pytest.raises(SqlError, match="already has a backfill in progress"):
            await server.start_snapshot("items_hook", "backfill", None)
        st = await wait_snapshot(server, "items_hook")
        assert st["state"] == "done"
        await asyncio.sleep(0.3)
        ids = sorted(e["key"]["id"] for e in receiver.events if e["operation"] == "READ")
        assert ids == list(range(1, 1201))
        # a full backfill, cancelled: it stops and says so
        await server.start_snapshot("items_hook", "backfill", None)
        await asyncio.sleep(0.2)
        await server.cancel_snapshot("items_hook")
        assert server.snapshot_status("items_hook")["state"] == "cancelled"  # type: ignore[index]
        with pytest.raises(SqlError, match="no backfill in progress"):
            await server.cancel_snapshot("items_hook")


async def test_backfill_resumes_after_restart(items: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    cfg = make_config(items, tmp_path, cdc={"snapshot_chunk_size": 1000})
    async with WebhookServer(cfg) as server:
        await server.create_stream(stream(receiver, "none"))
        await server.start_snapshot("items_hook", "backfill", None)
        for _ in range(200):
            st = server.snapshot_status("items_hook")
            if st and st["rows_sent"] >= 3000:
                break
            await asyncio.sleep(0.02)
    from heliosdb_cdc.store import Store

    saved = Store(cfg.state_dir).get_snapshot("items_hook")
    assert saved is not None and saved["state"] == "running"
    assert 0 < saved["rows_sent"] < ROWS
    async with WebhookServer(cfg) as server:
        st = await wait_snapshot(server, "items_hook")
    assert st["state"] == "done"
    ids = {e["key"]["id"] for e in receiver.events if e["operation"] == "READ"}
    assert ids == set(range(1, ROWS + 1))


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
