"""Captured tables are followed by name: a dropped, renamed or re-created table is a
SCHEMA_CHANGE event, a stream state, a metric; a re-created table's rows all arrive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc._metrics import REGISTRY
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def table_changes(receiver: Receiver, table: str) -> list[str]:
    return [
        e["value"]["table_change"]
        for e in receiver.events
        if e["operation"] == "SCHEMA_CHANGE" and e["table"] == table and "table_change" in e["value"]
    ]


def rows(receiver: Receiver, table: str, after: int = 0) -> dict[int, dict[str, Any]]:
    """Last value per id of INSERT/UPDATE/READ events after sequence ``after``."""
    out: dict[int, dict[str, Any]] = {}
    for e in sorted(receiver.events, key=lambda e: e["sequence"]):
        if e["table"] == table and e["sequence"] > after and e["operation"] in ("INSERT", "UPDATE", "READ"):
            out[e["key"]["id"]] = e["value"]
    return out


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def register(server: WebhookServer, receiver: Receiver, table: str) -> str:
    return await server.register(
        WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=[table], name="s")
    )


async def test_drop_and_recreate_delivers_every_row(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE dr (id int PRIMARY KEY, v int)")
    dropped_before = metric("heliosdb_cdc_table_changes_total", table="dr", change="dropped")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        await register(server, receiver, "dr")
        pg_db.execute("INSERT INTO dr VALUES (0, 0)")
        await receiver.wait_for(1)
        pg_db.execute("DROP TABLE dr")
        await until(lambda: "dropped" in table_changes(receiver, "dr"), "the dropped event")
        status = server.stream_status("s")
        assert status["state"] == "warning"
        assert "table dr was dropped" in status["last_error"]
        assert metric("heliosdb_cdc_table_missing", table="dr") == 1
        assert metric("heliosdb_cdc_table_changes_total", table="dr", change="dropped") == dropped_before + 1
        mark = max(e["sequence"] for e in receiver.events)

        # re-created and written at once, before the service can add it to the publication
        pg_db.execute(
            "CREATE TABLE dr (id int PRIMARY KEY, v int); INSERT INTO dr SELECT g, g FROM generate_series(1, 5) g"
        )
        await until(lambda: len(rows(receiver, "dr", mark)) == 5, "the 5 rows of the re-created table")
        assert rows(receiver, "dr", mark) == {i: {"id": i, "v": i} for i in range(1, 6)}
        assert table_changes(receiver, "dr") == ["dropped", "recreated"]
        await until(lambda: server.stream_status("s")["state"] == "running", "the stream to run again")
        assert metric("heliosdb_cdc_table_missing", table="dr") == 0
        pg_db.execute("UPDATE dr SET v = 50 WHERE id = 5")
        await until(lambda: rows(receiver, "dr", mark)[5] == {"id": 5, "v": 50}, "the live update")


async def test_recreated_while_stopped_is_reread_on_start(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE rs (id int PRIMARY KEY, v int)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await register(server, receiver, "rs")
        pg_db.execute("INSERT INTO rs VALUES (0, 0)")
        await receiver.wait_for(1)
    pg_db.execute("DROP TABLE rs")
    pg_db.execute("CREATE TABLE rs (id int PRIMARY KEY, v int)")
    pg_db.execute("INSERT INTO rs SELECT g, g FROM generate_series(1, 5) g")
    async with WebhookServer(cfg):
        await until(lambda: len(rows(receiver, "rs", 1)) == 5, "the rows written while stopped")
        assert table_changes(receiver, "rs") == ["recreated"]


async def test_rename_is_reported_and_rename_back_rereads(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE rn (id int PRIMARY KEY, v int)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        await register(server, receiver, "rn")
        pg_db.execute("INSERT INTO rn VALUES (1, 1)")
        await receiver.wait_for(1)
        pg_db.execute("ALTER TABLE rn RENAME TO rn2")
        pg_db.execute("INSERT INTO rn2 VALUES (2, 2)")  # not delivered: the stream names rn
        await until(lambda: "renamed" in table_changes(receiver, "rn"), "the renamed event")
        event = next(e for e in receiver.events if e["value"].get("table_change") == "renamed")
        assert event["value"]["renamed_to"] == "rn2"
        status = server.stream_status("s")
        assert status["state"] == "warning"
        assert "renamed to public.rn2" in status["last_error"]
        assert metric("heliosdb_cdc_table_missing", table="rn") == 1
        assert not any(e["table"] == "rn2" for e in receiver.events)

        pg_db.execute("ALTER TABLE rn2 RENAME TO rn")  # back: what it missed is re-read
        await until(lambda: 2 in rows(receiver, "rn"), "row 2, written while renamed")
        assert table_changes(receiver, "rn") == ["renamed", "recreated"]
        await until(lambda: server.stream_status("s")["state"] == "running", "the stream to run again")
